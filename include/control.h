/* control — the local control socket: HTTP/1.1 + JSON over a unix socket
 * (SPEC.md "Control API"), peers checked with SO_PEERCRED. Main thread. */
#ifndef PMD_CONTROL_H
#define PMD_CONTROL_H

struct pmd;
struct control;

/* Create the socket (folder 0750, socket 0660 root:control_group) and
 * start serving; a listening socket on that path given at start
 * (listenfds: the hand-over from a previous pmd) is used as it is.
 * NULL + errp. */
struct control *control_new(struct pmd *d, char **errp);
/* The listening socket (for a hand-over), -1 once handed over. */
int control_listen_fd(struct control *c);
/* A new pmd serves the socket now: stop accepting on it, and leave the
 * path alone at control_free. Open connections finish. */
void control_handed_over(struct control *c);
void control_free(struct control *c);   /* NULL ok; unlinks the socket (unless handed over) */

#endif

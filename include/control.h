/* control — the local control socket: HTTP/1.1 + JSON over a unix socket
 * (SPEC.md "Control API"), peers checked with SO_PEERCRED. Main thread. */
#ifndef PMD_CONTROL_H
#define PMD_CONTROL_H

struct pmd;
struct control;

/* Create the socket (folder 0750, socket 0660 root:control_group) and
 * start serving. NULL + errp. */
struct control *control_new(struct pmd *d, char **errp);
void control_free(struct control *c);   /* NULL ok; unlinks the socket */

#endif

/* sdnotify — the sd_notify(3) protocol without libsystemd: datagrams to
 * $NOTIFY_SOCKET ("/path" or "@abstract"). No-ops when it is unset. */
#ifndef PMD_SDNOTIFY_H
#define PMD_SDNOTIFY_H

#include <stdint.h>

/* Send `state` ("READY=1", "STOPPING=1", ...). 0 sent or nothing to do, -1 error. */
int sdnotify(const char *state);
/* Watchdog interval requested by systemd (WATCHDOG_USEC, honouring
 * WATCHDOG_PID), in microseconds; 0 when none. */
uint64_t sdnotify_watchdog_usec(void);

#endif

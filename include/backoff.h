/* backoff — restart delays of crashed instances: 1 s, 2 s, 4 s ... capped
 * at 60 s; the count of consecutive crashes is reset once an instance has
 * stayed healthy for BACKOFF_RESET_MS. */
#ifndef PMD_BACKOFF_H
#define PMD_BACKOFF_H

#include <stdint.h>

#define BACKOFF_BASE_MS 1000u
#define BACKOFF_CAP_MS 60000u
#define BACKOFF_RESET_MS 60000u

/* Delay before restart number `crashes` (consecutive crashes, >= 1; 0 is
 * treated as 1). */
uint64_t backoff_delay_ms(unsigned crashes);

#endif

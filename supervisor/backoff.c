/* backoff — restart delays. See include/backoff.h. */
#include "backoff.h"

uint64_t backoff_delay_ms(unsigned crashes)
{
	uint64_t d = BACKOFF_BASE_MS;

	for (unsigned i = 1; i < crashes && d < BACKOFF_CAP_MS; i++)
		d *= 2;
	return d < BACKOFF_CAP_MS ? d : BACKOFF_CAP_MS;
}

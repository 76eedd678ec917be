/* renew — renewal-time arithmetic of the ACME client (see include/acme.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acme.h"

#define DAY 86400

time_t acme_renewal_time(time_t not_before, time_t not_after)
{
	time_t life = not_after - not_before;
	if (life <= 0)
		return not_after;
	return not_after - (life < 10 * DAY ? life / 2 : life / 3);
}

time_t acme_ari_pick(time_t start, time_t end, uint64_t rnd)
{
	if (end <= start)
		return start;
	return start + (time_t)(rnd % ((uint64_t)(end - start) + 1));
}

uint64_t acme_backoff_ms(unsigned failures, uint64_t rnd)
{
	static const uint64_t steps[] = { 60000, 600000, 6000000 };
	if (failures == 0)
		failures = 1;
	uint64_t base = failures <= 3 ? steps[failures - 1] : (uint64_t)DAY * 1000;
	/* jitter in [-10 %, +10 %] */
	uint64_t span = base / 5;
	return base - base / 10 + rnd % (span + 1);
}

int acme_parse_time(const char *s, time_t *out)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return -1;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	long off = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
		int h, m;
		if (sscanf(p + 1, "%2d:%2d", &h, &m) != 2)
			return -1;
		off = (h * 60L + m) * 60 * (*p == '-' ? -1 : 1);
		p += 6;
	} else {
		return -1;
	}
	if (*p)
		return -1;
	*out = timegm(&tm) - off;
	return 0;
}

void acme_format_time(time_t t, char *buf, size_t cap)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

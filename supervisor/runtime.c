/* runtime — instance records shared by every runtime, and the runtime of
 * a service kind. See include/runtime.h. */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>

/* Lines of output kept per instance (status, crash loops, `pmctl logs`). */
#define RT_LOG_LINES 200

struct rt_instance *rt_instance_new(const char *service, const char *color)
{
	struct rt_instance *i = calloc(1, sizeof(*i));

	if (i == NULL)
		return NULL;
	i->logs = logring_new(RT_LOG_LINES);
	if (i->logs == NULL) {
		free(i);
		return NULL;
	}
	snprintf(i->service, sizeof(i->service), "%s", service);
	snprintf(i->color, sizeof(i->color), "%s", color);
	snprintf(i->name, sizeof(i->name), "pm-%s-%s", service, color);
	i->pid = -1;
	return i;
}

void rt_instance_free(struct rt_instance *i)
{
	if (i == NULL)
		return;
	logring_free(i->logs);
	free(i);
}

const struct runtime_ops *runtime_for(enum runtime_kind k)
{
	switch (k) {
	case RUNTIME_DOCKER:
		return &runtime_docker_ops;
	case RUNTIME_EXEC:
		return &runtime_exec_ops;
	case RUNTIME_EXTERNAL:
		return &runtime_external_ops;
	}
	return NULL;
}

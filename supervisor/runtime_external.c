/* runtime_external — a service pmd routes to and health-checks but does not
 * run: the instance is svc->address. Nothing to pull, start, stop or log. */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct ext_priv {
	rt_exit_fn on_exit;
	void *arg;
};

static void ext_start(struct runtime_ctx *rt, const struct svc_conf *svc, struct rt_instance *inst,
	char *const *env, rt_exit_fn on_exit, rt_done_fn done, void *arg)
{
	struct ext_priv *p = calloc(1, sizeof(*p));

	(void)rt;
	(void)env;
	if (p == NULL) {
		done(arg, 0, "out of memory");
		return;
	}
	p->on_exit = on_exit;
	p->arg = arg;
	inst->priv = p;
	snprintf(inst->id, sizeof(inst->id), "%s", svc->address);
	snprintf(inst->addr, sizeof(inst->addr), "%s", svc->address);
	inst->started_at = (long)time(NULL);
	done(arg, 1, NULL);
}

/* Nothing runs: "stopping" ends at once, with the exit the contract
 * promises for every started instance. */
static void ext_stop(struct runtime_ctx *rt, struct rt_instance *inst, unsigned long timeout_ms,
	rt_done_fn done, void *arg)
{
	struct ext_priv *p = inst->priv;

	(void)rt;
	(void)timeout_ms;
	if (p != NULL && p->on_exit != NULL) {
		p->on_exit(p->arg, inst, 0, false);
		p->on_exit = NULL;
	}
	done(arg, 1, NULL);
}

static void ext_logs(struct runtime_ctx *rt, struct rt_instance *inst, int tail,
	rt_logs_fn done, void *arg)
{
	(void)rt;
	(void)tail;
	done(arg, 1, NULL, inst->logs);
}

static void ext_release(struct rt_instance *inst)
{
	free(inst->priv);
	inst->priv = NULL;
}

const struct runtime_ops runtime_external_ops = {
	.name = "external",
	.start = ext_start,
	.stop = ext_stop,
	.logs = ext_logs,
	.release = ext_release,
};

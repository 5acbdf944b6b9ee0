# Corrections and speed-ups of Snakemake internals, each guarded: on a Snakemake without the internal it
# touches it does nothing. Measured on the paper sweep's dry run (3,482 jobs) by bench/dag.py
# (docs/pipeline.md, "DAG build").


def _list_only_real_params_changes():
    """`snakemake --list-changes params` on Snakemake 9.27 lists the last output of every job, changed or
    not: a `ParamsChange` without a change still iterates the files it was checked for. Make such a change
    iterate nothing (a no-op on a Snakemake that already does so); the rerun decisions never iterate it."""
    try:
        from snakemake.persistence import ParamsChange
    except ImportError:  # another Snakemake: nothing to correct
        return
    if list(ParamsChange(files={"unchanged"})):
        ParamsChange.__iter__ = lambda self: iter(self.files if self else ())


def _remember_function_signatures():
    """Snakemake inspects the signature of every input, params and resource function each time it calls
    one (about 50,000 `inspect.signature` calls per paper dry run). A function's signature never changes:
    inspect each one once."""
    import inspect

    try:
        import snakemake.common as common
        import snakemake.jobs as jobs
        import snakemake.rules as rules
    except ImportError:
        return
    uncached = getattr(common, "get_function_params", None)
    if uncached is None or getattr(uncached, "remembers", False):
        return

    remembered = {}

    def get_function_params(func):
        if hasattr(func, common.FUNC_OVERWRITE_PARAMS_ATTR):
            return uncached(func)
        key = (getattr(func, "__func__", func), inspect.ismethod(func))  # a method: its function, bound
        try:
            return remembered[key]
        except KeyError:
            params = remembered[key] = uncached(func)
            return params
        except TypeError:  # an unhashable callable
            return uncached(func)

    get_function_params.remembers = True
    for namespace in (common, jobs, rules):  # each imported the function by name
        if getattr(namespace, "get_function_params", None) is uncached:
            namespace.get_function_params = get_function_params


def _check_each_script_once():
    """Snakemake checks that a rule's `script:` exists by reading it through the source cache once per job
    (3,482 reads of 12 scripts per paper dry run). A script path without wildcards is checked once per rule;
    one with wildcards still per job."""
    try:
        from snakemake.dag import ScriptProcessor
    except ImportError:
        return
    if getattr(ScriptProcessor.process_job, "once_per_rule", False):
        return
    check, checked = ScriptProcessor.process_job, set()

    def process_job(self, job):
        path = str(getattr(job.rule, self.script_type, None))
        key = (type(self), job.rule.name, path)
        if key not in checked or "{" in path:  # a path formatted per job is checked per job
            check(self, job)
            checked.add(key)

    process_job.once_per_rule = True
    ScriptProcessor.process_job = process_job


def _collect_garbage_less_often():
    """The DAG of a paper sweep is hundreds of thousands of live objects, which Python's default cyclic-GC
    threshold (a collection every 700 allocations) scans about 1,300 times during a dry run: 1.3-1.7 s of
    it. Snakemake's objects rarely form garbage cycles: collect every 50,000 allocations (0.2 s)."""
    import gc

    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 50_000), gen1, gen2)


_list_only_real_params_changes()
_collect_garbage_less_often()
_remember_function_signatures()
_check_each_script_once()

"""workflow/rules/snakemake_fixes.smk: the guarded patches keep Snakemake's answers and apply once."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXES = ROOT / "workflow" / "rules" / "snakemake_fixes.smk"


def test_remembered_signatures_are_snakemakes_and_the_patches_apply_once():
    script = textwrap.dedent(f"""
        import functools, inspect
        import snakemake.api  # loads Snakemake as the CLI does (snakemake.dag alone is a circular import)
        import snakemake.common as common, snakemake.jobs as jobs, snakemake.rules as rules
        from snakemake.dag import ScriptProcessor
        source = open({str(FIXES)!r}).read()
        exec(source, {{}})
        patched, process_job = common.get_function_params, ScriptProcessor.process_job
        exec(source, {{}})  # a second include changes nothing
        assert common.get_function_params is patched and ScriptProcessor.process_job is process_job
        assert jobs.get_function_params is patched and rules.get_function_params is patched
        import gc
        assert gc.get_threshold()[0] >= 50_000

        class Resource:
            def evaluate(self, wildcards, input, attempt): ...
        def inputs(wildcards, resources): ...
        cases = [inputs, lambda wildcards: 0, Resource().evaluate, Resource().evaluate,
                 functools.partial(inputs, 1), divmod]
        for f in cases * 2:
            want = inspect.signature(f).parameters
            assert list(patched(f)) == list(want), (f, list(patched(f)), list(want))
        overwritten = lambda *args: 0
        common.overwrite_function_params(overwritten, ["a", "b"])
        assert patched(overwritten) == ["a", "b"]
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_fixes_file_is_included_before_the_rules():
    snakefile = (ROOT / "Snakefile").read_text().splitlines()
    includes = [line for line in snakefile if line.startswith("include:")]
    assert includes[0] == 'include: "workflow/rules/snakemake_fixes.smk"'

"""The top-level package exposes the public API lazily."""

import subprocess
import sys

import edm2lib


def test_every_exported_name_resolves_to_its_module_object():
    import importlib

    for name in edm2lib.__all__:
        module = importlib.import_module(edm2lib._MODULE_OF[name])
        assert getattr(edm2lib, name) is getattr(module, name)


def test_import_is_lazy_and_unknown_names_fail_clearly():
    code = "import sys, edm2lib; assert 'torch' not in sys.modules; edm2lib.nope"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "module 'edm2lib' has no attribute 'nope'" in result.stderr


def test_precond_builds_from_the_top_level_name():
    kwargs = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    net = edm2lib.Precond(16, 3, 0, **kwargs)
    assert isinstance(net, edm2lib.nn.networks.Precond)

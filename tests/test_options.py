"""Options belong to their owner (`longctx.options`): a flag two methods declare with different
meanings is two fields, a foreign option is refused naming the owners that take it, switches
are real booleans on the command line and in eval variants, launchers declare theirs too."""

import contextlib
import io

import pytest

from apb.method import APBAttention
from burst.ring import RingAttention
from launch.ray import RayLauncher
from longctx.cli import build_parser, main
from longctx.config import RunConfig, config_from_args
from longctx.errors import LongCtxError
from longctx.eval.variants import parse_spec
from longctx.options import declarations
from spava.method import SpavaAttention


def parsed(*argv):
    """The validated RunConfig of `longctx *argv` (a `generate` command line)."""
    argv = list(argv)
    return config_from_args(build_parser(argv).parse_args(argv))


def generate(*flags):
    return ("generate", "--model", "m", *flags)


def test_a_flag_two_methods_declare_differently_is_two_fields():
    spava = parsed(*generate("--method", "spava", "--anchor-len", "7"))
    assert SpavaAttention.planner_for(spava).options.anchor_len == 7
    assert APBAttention.planner_for(spava).options.anchor_len is None  # APB's own field is untouched
    apb = parsed(*generate("--method", "apb", "--anchor-len", "9"))
    assert APBAttention.planner_for(apb).options.anchor_len == 9
    assert SpavaAttention.planner_for(apb).options.anchor_len is None
    assert list(spava.options) == ["spava.method.SpavaOptions.anchor_len"]


def test_help_shows_each_methods_own_text_and_default():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser(["generate", "--help"]).parse_args(["generate", "--help"])
    text = " ".join(out.getvalue().split())
    apb_group, spava_group = text.split("options of apb, star:")[1], text.split("options of spava:")[1]
    assert "--anchor-len ANCHOR_LEN apb/star: anchor tokens (default: apb l_b/4" in apb_group
    assert "--anchor-len ANCHOR_LEN spava: anchor tokens every host runs (default n/64 rounded up" in spava_group
    assert "--no-fused-query (the reference's 'nf') prefills the document alone" in spava_group
    assert "--overlap, --no-overlap spava: post the passing" in spava_group and "(default: on)" in spava_group
    assert "options of launcher ray: --ray-address ADDR" in text


@pytest.mark.parametrize("argv,message", [
    (generate("--method", "burst", "--anchor-len", "5"),
     "--anchor-len is not an option of method 'burst' and launcher 'local' (it is one of methods 'apb', 'star' "
     "and 'spava')"),
    (generate("--method", "dense", "--no-overlap"),
     "--overlap is not an option of method 'dense' and launcher 'local' (it is one of method 'spava')"),
    (generate("--ray-address", "auto"),
     "--ray-address is not an option of method 'burst' and launcher 'local' (it is one of launcher 'ray')"),
    (("eval", "--model", "m", "--methods", "apb,spava", "--anchor-len", "5"),
     "--anchor-len means different things to method 'apb' and to method 'spava': give it for one method, e.g. "
     "apb[anchor-len=...]"),
    (generate("--method", "spava", "--anchor-len", "many"), "--anchor-len: 'many' is not a valid int"),
])
def test_a_foreign_or_ambiguous_option_is_one_line_naming_its_owners(argv, message):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    assert status == 2 and err.getvalue() == f"longctx: error: {message}\n", err.getvalue()


def test_the_python_api_resolves_options_the_same_way():
    assert RunConfig(method="spava", overlap=False).options == {"spava.method.SpavaOptions.overlap": False}
    with pytest.raises(LongCtxError, match="--anchor-len is not an option of method 'burst'"):
        RunConfig(method="burst", anchor_len=5)
    with pytest.raises(LongCtxError, match="unknown option --anchor-lenn"):
        RunConfig(method="apb", anchor_lenn=5)
    ray = RunConfig(launcher="ray", ray_address="auto", ray_cpus_per_worker=2)
    assert ray.options_for(RayLauncher).ray_address == "auto" and ray.options_for(RayLauncher).placement == "pack"
    with pytest.raises(LongCtxError, match="--placement must be one of pack, spread"):
        RunConfig(launcher="ray", placement="sideways")


def test_a_shared_declaration_is_one_option():
    """ring and burst share RingOptions, the uneven plug-in inherits it: one declaration, one value."""
    from plugins.uneven import UnevenRing

    config = RunConfig.for_methods(["ring", "burst", "plugins.uneven:UnevenRing"], intra_size=2)
    assert config.options == {"burst.ring.RingOptions.intra_size": 2}
    assert RingAttention.planner_for(config).options.intra_size == 2
    assert UnevenRing.planner_for(config).options.intra_size == 2
    keys = {item.name: item.key for item in declarations(UnevenRing.Options)}
    assert keys == {"intra_size": "burst.ring.RingOptions.intra_size",
                    "uneven_seed": "plugins.uneven.UnevenOptions.uneven_seed"}


def test_switches_are_booleans_on_the_command_line_and_in_variants():
    assert SpavaAttention.planner_for(parsed(*generate("--method", "spava", "--no-overlap"))).options.overlap is False
    assert SpavaAttention.planner_for(parsed(*generate("--method", "spava", "--overlap"))).options.overlap is True
    assert SpavaAttention.planner_for(parsed(*generate("--method", "spava"))).options.overlap is True
    assert parse_spec("spava[overlap=false,fused-query=off]").options == {"overlap": False, "fused_query": False}
    assert parse_spec("spava[anchor-sharding=true]").options == {"anchor_sharding": True}
    with pytest.raises(LongCtxError, match=r"overlap='maybe' in 'spava\[overlap=maybe\]' is not true or false"):
        parse_spec("spava[overlap=maybe]")
    with pytest.raises(SystemExit):  # a switch takes no value
        build_parser(generate("--overlap", "0")).parse_args(list(generate("--overlap", "0")))

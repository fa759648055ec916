"""The run's frozen configs and the command lines declare each default once in effect: every field a config takes
from a flag has the parser's default for that flag, and from_flags reads each flag into its field by name; the
pipeline command's batch size is the library's.

Which flag feeds which field is found, not listed: every parsed flag is replaced by a value naming it, and the
config built from those says where each one went."""

import argparse
import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_squad
from squad_internals import cli, decoding, training_state

REQUIRED = ["--model_name_or_path", "m", "--output_dir", "o", "--do_train", "--train_file", "t"]
SETUP = SimpleNamespace(choice=SimpleNamespace(precision="<derived>"))


def named_flags() -> argparse.Namespace:
    """Every parsed flag's value replaced by "<flag:NAME>"."""
    return argparse.Namespace(**{name: f"<flag:{name}>" for name in vars(cli.parse_args(REQUIRED))})


def built(config_cls, args):
    if config_cls is run_squad.LoopConfig:
        return config_cls.from_flags(args, SETUP, None)
    if config_cls is run_squad.EvalConfig:
        return config_cls.from_flags(args, SETUP, None, score=True, compiled=False)
    if config_cls is decoding.DecodingSettings:
        return run_squad.EvalConfig.from_flags(args, SETUP, None, score=True, compiled=False).settings
    return config_cls.from_flags(args)


def flags_of(config_cls) -> dict[str, str]:
    """{field: the flag it is read from}, for the fields that are one flag each."""
    config = built(config_cls, named_flags())
    found = {}
    for field in dataclasses.fields(config_cls):
        value = getattr(config, field.name)
        if isinstance(value, str) and value.startswith("<flag:"):
            found[field.name] = value.removeprefix("<flag:").removesuffix(">")
    return found


# The fields of each config that are not one flag each: derived in run() or by the caller, each said here so
# that a new field is either a flag (then its default is checked) or named as derived.
DERIVED = {
    run_squad.LoopConfig: {"output_dir", "train_file", "precision", "report_first_step"},
    training_state.OptimConfig: set(),
    run_squad.EvalConfig: {"output_dir", "settings", "score", "predict_path", "windows", "precision", "compiled"},
    decoding.DecodingSettings: set(),
}


@pytest.mark.parametrize("config_cls", list(DERIVED), ids=lambda c: c.__name__)
def test_every_field_is_a_flag_or_named_derived(config_cls):
    flags = flags_of(config_cls)
    assert set(flags) | DERIVED[config_cls] == {f.name for f in dataclasses.fields(config_cls)}
    assert not set(flags) & DERIVED[config_cls]
    # By name: a field takes the flag it is named after (EvalConfig's threshold aside, the classic flag's name).
    renamed = {field: flag for field, flag in flags.items() if field != flag}
    assert renamed == ({"threshold": "null_score_diff_threshold"} if config_cls is run_squad.EvalConfig else {})


@pytest.mark.parametrize("config_cls", list(DERIVED), ids=lambda c: c.__name__)
def test_every_flag_default_of_a_config_is_the_parsers(config_cls):
    parser, flags = cli.build_parser(), flags_of(config_cls)
    assert flags  # every config here takes some flags
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    for field, flag in flags.items():
        assert defaults[field] is not dataclasses.MISSING, field
        assert defaults[field] == parser.get_default(flag) and type(defaults[field]) is type(parser.get_default(flag)), \
            (config_cls.__name__, field, defaults[field], parser.get_default(flag))


def test_default_flags_build_the_default_configs():
    """The whole round: the parser's defaults, through from_flags, give each config's own defaults."""
    args = cli.parse_args(REQUIRED)
    setup = SimpleNamespace(choice=SimpleNamespace(precision="fp32"))
    assert training_state.OptimConfig.from_flags(args) == training_state.OptimConfig()
    loop = run_squad.LoopConfig.from_flags(args, setup, Path("t"))
    assert loop == run_squad.LoopConfig(Path("o"), train_file="t")
    evaluation = run_squad.EvalConfig.from_flags(args, setup, None, score=True, compiled=False)
    assert dataclasses.replace(evaluation, windows=None) == run_squad.EvalConfig(Path("o"), decoding.DecodingSettings())


@pytest.mark.parametrize("given, expected", [([], "library"), (["--batch_size", "5"], 5)])
def test_the_pipeline_commands_batch_size_is_the_librarys_unless_given(monkeypatch, tmp_path, given, expected):
    import qa_pipeline

    # The library's own default is the same constant.
    assert _default_of(qa_pipeline.QuestionAnsweringPipeline.__init__, "batch_size") == qa_pipeline.DEFAULT_BATCH_SIZE
    seen = {}

    class Recorder:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)
            raise _Stop

    monkeypatch.setattr(qa_pipeline, "QuestionAnsweringPipeline", Recorder)
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"question": "Who?", "context": "The Normans."}\n')
    model = Path(__file__).parent / "fixtures" / "qa_pipeline" / "model"
    with pytest.raises(_Stop):
        qa_pipeline.run(cli.check_pipeline_command([str(model), "--input", str(lines), *given]))
    assert seen["batch_size"] == (qa_pipeline.DEFAULT_BATCH_SIZE if expected == "library" else expected)


class _Stop(Exception):
    pass


def _default_of(function, name):
    return inspect.signature(function).parameters[name].default

"""The checks' own error rates on a sample of the audit table: no false alarm on correct code,
every planted bug of relative size 1e-3 caught in float64 and float32 (the full survey is
``manual-bp verify --survey``; its table is in docs/reliability.md)."""

from __future__ import annotations

import pytest

from manual_bp import RULES, Rule
from manual_bp.verify import survey
from manual_bp.verify.audit import check_one_network
from manual_bp.verify.table import ROWS

FAMILIES = ("tanh", "log_softmax", "dense", "layer_norm")
SAMPLE = tuple(r for r in ROWS if r.id in FAMILIES)


@pytest.fixture(scope="module")
def power():
    return survey.detection_power(seeds=1, rows=SAMPLE)


def test_the_sample_has_a_row_of_each_family_named():
    assert {r.rule for r in SAMPLE} == set(FAMILIES)


def test_no_false_alarm_on_correct_rules_in_any_dtype_or_domain():
    result = survey.false_alarms(seeds=1, rows=SAMPLE, networks=False)
    assert set(result["by_dtype"]) == {"float64", "float32", "bfloat16"}
    assert result["checks"] >= len(SAMPLE) * 3 * 2  # rows x dtypes x shapes
    assert result["alarms"] == []


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_false_alarm_on_a_network_with_a_zero_gradient_on_other_seeds(dtype):
    """The bias before batch norm (exact gradient 0) on draws other than the audit's."""
    for seed in (1, 2):
        result = check_one_network("batch-norm-dropout", dtype, seed)
        assert result["ok"], result


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", survey.KINDS)
def test_every_planted_bug_of_size_1e3_is_caught(power, dtype, kind):
    for size in (1e-1, 1e-2, 1e-3):
        caught, planted = power[dtype][f"{kind} {size:g}"]
        assert planted >= len(SAMPLE) and caught == planted, (kind, size, caught, planted)


def test_bfloat16_catches_most_bugs_of_size_1e1(power):
    caught = sum(power["bfloat16"][f"{k} 0.1"][0] for k in survey.KINDS)
    planted = sum(power["bfloat16"][f"{k} 0.1"][1] for k in survey.KINDS)
    assert caught >= 0.75 * planted


def test_a_wrong_rule_is_an_alarm_in_every_case(monkeypatch):
    tanh = RULES["tanh"]
    monkeypatch.setitem(
        RULES, "tanh", Rule("tanh", tanh.fwd, lambda r, g: (1.01 * tanh.bwd(r, g)[0],))
    )
    rows = tuple(r for r in SAMPLE if r.rule == "tanh")
    result = survey.false_alarms(seeds=1, rows=rows, dtypes=["float64", "float32"], networks=False)
    normal = [a for a in result["alarms"] if " normal " in a]
    assert result["checks"] > 0 and len(normal) == sum(len(r.shapes) for r in rows) * 2


def test_the_table_reports_rates_per_dtype(power):
    fa = {"checks": 4, "alarms": [], "by_dtype": {"float32": [4, 0]}}
    text = survey.to_markdown(
        {"seeds": 1, "detection_seeds": 1, "false_alarms": fa, "detection": power}
    )
    assert "| float32 | 4 | 0 | 0.00 |" in text
    assert "| scale 0.001 | " in text and "100.0% of" in text


def test_cli_survey_prints_both_tables_and_exits_by_the_alarms(monkeypatch, capsys, tmp_path):
    from manual_bp.cli import main

    whole = survey.survey
    rows = tuple(r for r in SAMPLE if r.rule == "tanh")
    monkeypatch.setattr(survey, "survey", lambda **kw: whole(rows=rows, networks=False, **kw))
    out = tmp_path / "survey.json"
    argv = ["verify", "--survey", "--seeds", "1", "--dtype", "float32", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| float32 |" in text and "| scale 0.001 | 100.0% of" in text
    assert "0 false alarm(s) in" in text and out.stat().st_size > 0

    tanh = RULES["tanh"]
    broken = Rule("tanh", tanh.fwd, lambda r, g: (1.01 * tanh.bwd(r, g)[0],))
    monkeypatch.setitem(RULES, "tanh", broken)
    assert main(argv) == 1
    assert "false alarm: tanh float32" in capsys.readouterr().out


def test_cli_survey_takes_no_rule_selection():
    from manual_bp.cli import main

    with pytest.raises(SystemExit) as info:
        main(["verify", "--survey", "--rule", "tanh"])
    assert info.value.code == 2

"""`edgeprune check`: exit 0 within budget, 1 over, 2 not measured; JUnit and Markdown;
budgets-file errors are one line and exit 2."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch

import edgeprune
from edgeprune import convert
from edgeprune.cli import main
from tests.nets import TinyNet, randomize_bn


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ck")
    return convert.to_tflite(randomize_bn(TinyNet()), d / "tiny.tflite", torch.zeros(1, 3, 32, 32))


def _budgets(tmp_path, body: str):
    p = tmp_path / "edgeprune-budgets.toml"
    p.write_text(body)
    return str(p)


def test_within_budget_exits_0_and_writes_junit_and_markdown(capsys, tmp_path, tflite):
    f = _budgets(tmp_path, f'[[budget]]\nartifact = "{tflite}"\ntarget = "host-litert"\nmax_ms = 1000\n')
    junit, md = tmp_path / "r.xml", tmp_path / "r.md"
    code, out, err = run(capsys, "check", f, "--junit", str(junit), "--markdown", str(md))
    assert code == 0, out + err
    assert "pass" in out and "1 within budget, 0 over, 0 not measured" in out
    suite = ET.parse(junit).getroot()  # parses as XML
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("failures") == "0"
    case = suite.find("testcase")
    assert case is not None and case.find("failure") is None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert float(props["ms"]) > 0 and props["mode"] == "measure"
    assert "| host-litert | measure |" in md.read_text()


def test_a_blown_budget_exits_1_with_a_failure_testcase(capsys, tmp_path, tflite):
    junit = tmp_path / "r.xml"
    code, out, _ = run(capsys, "check", str(tflite), "--target", "host-litert", "--budget-ms", "0.000001",
                       "--junit", str(junit))
    assert code == 1 and "fail" in out
    assert ET.parse(junit).getroot().find("testcase/failure") is not None


def test_a_measurement_that_fails_exits_2_never_0(capsys, tmp_path, tflite):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x00" * 128)  # not a model: it cannot be measured
    f = _budgets(tmp_path, f'[[budget]]\nartifact = "{tflite}"\ntarget = "host-litert"\nmax_ms = 1000\n'
                           f'[[budget]]\nartifact = "broken.tflite"\ntarget = "host-litert"\nmax_ms = 1000\n')
    junit = tmp_path / "r.xml"
    code, out, _ = run(capsys, "check", f, "--junit", str(junit))
    assert code == 2 and "error" in out and "1 within budget" in out
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1" and root.find("testcase/error") is not None


def test_an_unreachable_device_exits_2(capsys, tmp_path, tflite, agent_target):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = agent_target(port, name="away", timeout_s=3)
    code, out, _ = run(capsys, "check", str(tflite), "--target", t, "--budget-ms", "1000")
    assert code == 2 and "cannot reach the agent" in out


def test_budgets_on_a_device_and_the_host_check_concurrently(capsys, tmp_path, tflite, http_agent,
                                                              agent_target):
    t = agent_target(http_agent.port)
    f = _budgets(tmp_path, f'[[budget]]\nartifact = "{tflite}"\ntarget = "host-litert"\nmax_ms = 1000\n'
                           f'[[budget]]\nartifact = "{tflite}"\ntarget = "{t}"\nmax_ms = 1000\n')
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, "check", f, "--json", str(out_json))
    assert code == 0, out + err
    rows = json.loads(out_json.read_text())["results"]
    assert rows[0]["device"] is None and rows[1]["device"]["protocol"] == edgeprune.agent.PROTOCOL


def test_predict_mode_uses_the_targets_profile(capsys, tmp_path):
    """A CI runner that cannot reach the device predicts from the device's profile."""
    from edgeprune.profiling import dense_copy

    model = dense_copy(edgeprune.models.create("resnet20")).eval()
    ckpt = edgeprune.save(model, tmp_path / "m.safetensors")
    prof = edgeprune.profile(model, target="host-onnxruntime", max_points=2)
    prof.save(tmp_path / "p.json")
    f = _budgets(tmp_path, '[[budget]]\nartifact = "m.safetensors"\ntarget = "host-onnxruntime"\n'
                           'max_ms = 1000\nmode = "predict"\nprofile = "p.json"\n'
                           '[[budget]]\nartifact = "m.safetensors"\ntarget = "host-onnxruntime"\n'
                           'max_ms = 0.0001\nmode = "predict"\nprofile = "p.json"\n')
    report = edgeprune.check(f)
    assert [r.status for r in report.results] == ["pass", "fail"] and report.exit_code == 1
    assert report.results[0].ms == pytest.approx(prof.predict_ms(model))
    assert report.results[0].pass_spread is None and ckpt.exists()


@pytest.mark.parametrize("body, needle", [
    ('[[budget]]\nartifact = "{a}"\ntarget = "host-litert"\nmax_ms = 1\nmax_msec = 2\n', "unknown key(s) ['max_msec']"),
    ('[[budget]]\nartifact = "nope.tflite"\ntarget = "host-litert"\nmax_ms = 1\n', "nope.tflite' does not exist"),
    ('[[budget]]\nartifact = "{a}"\ntarget = "pi9"\nmax_ms = 1\n', "unknown target 'pi9'"),
    ('[[budget]]\nartifact = "{a}"\ntarget = "host-litert"\nmax_ms = -1\n', "max_ms = -1"),
    ('[[budget]]\nartifact = "{a}"\ntarget = "host-litert"\nmax_ms = 1\nmode = "predict"\n', "needs profile"),
    ('[[budgets]]\nartifact = "{a}"\n', "unknown top-level key(s) ['budgets']"),
])
def test_budgets_file_errors_are_one_line_and_exit_2(capsys, tmp_path, tflite, body, needle):
    f = _budgets(tmp_path, body.format(a=tflite))
    code, out, err = run(capsys, "check", f)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert out == ""


def test_a_pass_by_less_than_its_own_pass_spread_is_marked_close_and_still_exits_0(tflite):
    from edgeprune.budgets import Budget, BudgetReport, BudgetResult
    from edgeprune.targets import load_target

    b = Budget(tflite, load_target("host-litert"), 1.0)
    close = BudgetResult(b, "pass", 0.99, pass_spread=0.03)  # 1% under, passes 3% apart
    clear = BudgetResult(b, "pass", 0.90, pass_spread=0.03)
    predicted = BudgetResult(b, "pass", 0.999)  # predict mode: no passes, nothing to compare
    report = BudgetReport((close, clear, predicted))
    assert [r.close for r in report.results] == [True, False, False] and report.exit_code == 0
    text = str(report)
    assert text.count("pass (close)") == 1 and "1 within budget by less than the spread" in text
    assert report.to_markdown().count("pass (close)") == 1
    assert [r["close"] for r in report.to_dict()["results"]] == [True, False, False]
    assert "(close)" not in str(BudgetReport((clear,)))
    cases = ET.fromstring(report.to_junit()).findall("testcase")
    assert [c.find("properties/property[@name='close']") is not None for c in cases] == [True, False, False]
    assert [c.find("system-out") is not None for c in cases] == [True, False, False]
    assert all(c.find("failure") is None for c in cases)  # a close pass is still a pass

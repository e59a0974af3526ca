"""The pytest plugin as a user meets it: a pytest.ini and a test file in a fresh directory, run
by pytest in its own process (pytester), against the C reference firmware."""

import pytest

pytestmark = pytest.mark.slow

USER_TEST = '''
from dualmcu import Misbehave

def test_update(dualmcu_ncp, dualmcu_image):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0")).outcome()
    assert outcome.ok and outcome.version == "1.1.0", outcome

def test_expects_the_wrong_thing(dualmcu_ncp, dualmcu_image):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0"), misbehave=Misbehave(offer_type="TMPL0OTHER")).outcome()
    assert outcome.version == "1.1.0", outcome
'''


@pytest.fixture
def user(pytester, refmcu):
    pytester.makeini(f"""
        [pytest]
        dualmcu_firmware = {refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}
        dualmcu_fw_type = TMPL0USER
        dualmcu_timeout = 60
    """)
    pytester.makepyfile(test_user=USER_TEST)
    return pytester


def test_a_users_suite_runs_reports_failures_with_the_firmwares_output_and_fills_junit(user):
    import xml.etree.ElementTree as ET

    result = user.runpytest_subprocess("--junitxml=report.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    # The failure's report: the NCP's last events and the firmware's own lines.
    result.stdout.fnmatch_lines(["*dualmcu ncp*", "*last events of dualmcu ncp:*", "*misbehaved*",
                                 "*the firmware's output*", "*offer refused: wrong_type*"])
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(user.path / "report.xml").getroot().iter("testcase")}
    assert cases["test_update"]["dualmcu_verdict"] == "confirmed"
    assert cases["test_update"]["dualmcu_version"] == "1.1.0"
    assert cases["test_expects_the_wrong_thing"]["dualmcu_reason"] == "wrong_type"


def test_the_command_line_option_names_the_firmware_and_none_at_all_is_one_clear_failure(pytester, refmcu):
    pytester.makepyfile(test_user=USER_TEST.split("def test_expects")[0])
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set dualmcu_firmware in pytest.ini (or give --dualmcu-firmware)*"])
    cmd = f"{refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}"
    pytester.runpytest_subprocess("--dualmcu-firmware", cmd).assert_outcomes(passed=1)


def test_the_plugin_is_found_through_its_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "dualmcu"]
    assert ep.value == "dualmcu.pytest_plugin"


def test_tests_run_side_by_side_under_xdist_each_with_its_own_pty_and_files(pytester, refmcu):
    """pytest -n 2: two workers, each test its own pty, flash and folder; all pass, nothing left."""
    pytester.makeini(f"""
        [pytest]
        dualmcu_firmware = {refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}
        dualmcu_fw_type = TMPL0USER
    """)
    pytester.makepyfile(test_many='''
import pytest

@pytest.mark.parametrize("n", range(6))
def test_update(dualmcu_ncp, dualmcu_image, n):
    outcome = dualmcu_ncp(dualmcu_image(f"1.{n + 1}.0", size=16 * 1024)).outcome()
    assert outcome.verdict == "confirmed" and outcome.version == f"1.{n + 1}.0", outcome
''')
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_a_setting_that_is_not_a_number_is_one_clear_failure(pytester, refmcu):
    pytester.makeini(f"""
        [pytest]
        dualmcu_firmware = {refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}
        dualmcu_baud = fast
    """)
    pytester.makepyfile(test_user=USER_TEST.split("def test_expects")[0])
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dualmcu_baud = 'fast' in the ini: give a positive number*"])
    assert "Traceback" not in result.stdout.str()

"""`tune --resume` loads Ray Tune's pickles (tuner.pkl, experiment and searcher state): it must refuse state
that raygenre did not record or that someone else could have written, before anything is unpickled.

The guard is tested on crafted experiment folders (no Ray), on S3 (moto), and once through the CLI on the
session's Ray; `tests/test_tune.py` resumes a real interrupted search through the same guard.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pwd
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raygenre import storage
from raygenre.training.tune import (
    TUNER_PKL,
    TUNER_RECORD,
    ResumeRefusedError,
    _group_is_mine,
    check_resumable,
    record_tuner,
)

ROOT = os.getuid() == 0


class _Evil:
    """Unpickling this writes ``marker``: what a planted tuner.pkl could do with the user's rights."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Evil(marker))


def make_experiment(out: Path, model: str = "ann") -> Path:
    """A tune folder laid out as Tune leaves it (tuner.pkl, experiment state, a trial), recorded by raygenre."""
    exp = out / "tune" / model
    trial = exp / "run_trial_00000"
    trial.mkdir(parents=True)
    (exp / TUNER_PKL).write_bytes(pickle.dumps({"_tune_config": "a stand-in for Tune's state"}))
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    (exp / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps({"state": 1}))
    (trial / "result.json").write_text('{"epoch": 1}\n')
    record_tuner(str(exp))
    return exp


def refused(exp: Path, out: Path, match: str) -> None:
    with pytest.raises(ResumeRefusedError, match=match) as err:
        check_resumable(str(exp), str(out))
    assert "\n" not in str(err.value) and "run without --resume" in str(err.value)


def test_the_crafted_pickle_really_runs_code(tmp_path: Path) -> None:
    pickle.loads(evil_pickle(tmp_path / "proof"))  # noqa: S301 - the point: this is what restore would do
    assert (tmp_path / "proof").read_text() == "ran"


def test_a_recorded_folder_only_i_can_write_is_resumable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    assert (exp / TUNER_RECORD).read_text().strip() == hashlib.sha256((exp / TUNER_PKL).read_bytes()).hexdigest()
    check_resumable(str(exp), str(out))  # no error
    # under a sticky world-writable folder (/tmp-like): others cannot move this user's entries there
    shared = tmp_path / "sticky"
    shared.mkdir()
    shared.chmod(0o1777)
    exp2 = make_experiment(shared / "out")
    check_resumable(str(exp2), str(shared / "out"))


def test_a_replaced_tuner_pkl_is_refused_and_never_loaded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    marker = tmp_path / "marker"
    planted = evil_pickle(marker)
    (exp / TUNER_PKL).write_bytes(planted)
    refused(exp, out, "tuner.pkl is not the one raygenre recorded")
    assert not marker.exists() and (exp / TUNER_PKL).read_bytes() == planted


def test_a_missing_record_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    (exp / TUNER_RECORD).unlink()
    refused(exp, out, f"{TUNER_RECORD} is missing")


@pytest.mark.parametrize("victim", [TUNER_PKL, "experiment_state-2026-01-01_00-00-00.json",
                                    "run_trial_00000/result.json", "run_trial_00000", "."])
def test_anything_world_writable_is_refused(tmp_path: Path, victim: str) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    before = (exp / TUNER_PKL).read_bytes()
    (exp / victim).chmod(0o777 if (exp / victim).is_dir() else 0o666)
    refused(exp, out, "is writable by other users")
    assert (exp / TUNER_PKL).read_bytes() == before


def test_a_writable_out_or_parent_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "shared" / "out"
    exp = make_experiment(out)
    out.chmod(0o777)
    refused(exp, out, "is writable by other users")
    out.chmod(0o755)
    (tmp_path / "shared").chmod(0o777)  # not sticky: anyone could swap `out` for their own folder
    refused(exp, out, r"above --out\) is writable by other users")


def test_a_symlink_in_the_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    elsewhere = tmp_path / "elsewhere.pkl"
    elsewhere.write_bytes(b"not raygenre's")
    (exp / "searcher-state-2026-01-01_00-00-00.pkl").symlink_to(elsewhere)
    refused(exp, out, "is a symbolic link")
    assert elsewhere.read_bytes() == b"not raygenre's"


@pytest.mark.skipif(not ROOT, reason="needs root to give a file to another user or group")
def test_another_owner_or_a_shared_group_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = make_experiment(out)
    try:
        nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no users nobody and daemon here")
    os.chown(exp / TUNER_PKL, nobody.pw_uid, -1)
    refused(exp, out, f"belongs to uid {nobody.pw_uid}, not to you")
    os.chown(exp / TUNER_PKL, 0, -1)
    # group-writable is fine only for a group that holds nobody else: daemon's group is daemon's
    os.chown(exp / TUNER_PKL, -1, daemon.pw_gid)
    (exp / TUNER_PKL).chmod(0o664)
    refused(exp, out, "is writable by other users")
    if _group_is_mine(0):  # root's own group, when nobody else is in it: group-writable is then harmless
        os.chown(exp / TUNER_PKL, -1, 0)
        assert stat.S_IMODE((exp / TUNER_PKL).stat().st_mode) == 0o664
        check_resumable(str(exp), str(out))


def test_on_s3_the_record_is_the_guard(s3: str) -> None:
    exp = f"{s3}/out/tune/ann"
    storage.write_bytes_atomic(storage.join(exp, TUNER_PKL), pickle.dumps({"state": 1}))
    record_tuner(exp)
    check_resumable(exp, f"{s3}/out")
    planted = evil_pickle(Path("/nonexistent/marker"))
    storage.write_bytes_atomic(storage.join(exp, TUNER_PKL), planted)
    with pytest.raises(ResumeRefusedError, match="tuner.pkl is not the one raygenre recorded"):
        check_resumable(exp, f"{s3}/out")
    assert storage.read_bytes(storage.join(exp, TUNER_PKL)) == planted


# ------------------------------------------------------------------------------------------------- with Ray
def test_cli_resume_refuses_a_planted_pickle_with_one_line(tmp_path: Path, ray_local: None) -> None:
    from conftest import write_feature_table

    from raygenre.cli import app

    feats = tmp_path / "features"
    write_feature_table(feats)
    out = tmp_path / "out"
    exp = make_experiment(out)
    marker = tmp_path / "marker"
    planted = evil_pickle(marker)
    (exp / TUNER_PKL).write_bytes(planted)
    res = CliRunner().invoke(app, ["tune", "--resume", "--features", str(feats), "--out", str(out), "--models", "ann",
                                   "--no-set-default"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "error: refusing to resume the search in" in text and "tuner.pkl is not the one raygenre recorded" in text
    assert "Traceback" not in res.output
    assert not marker.exists() and (exp / TUNER_PKL).read_bytes() == planted
    assert sorted(os.listdir(out)) == ["tune"]  # nothing written (the lease was released), nothing run

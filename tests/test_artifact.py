"""Model artifacts: safetensors + model.json round trip (local and file:// URI), and refusing unsafe files."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import raygenre
from raygenre.config import FeatureParams
from raygenre.model.artifact import (
    CPU_CHUNK,
    META,
    WEIGHTS,
    ArtifactError,
    LoadedModel,
    load_model,
    save_model,
    weights_path,
)
from raygenre.model.networks import build_model

PARAMS = FeatureParams(sample_rate=22050, n_mfcc=13, n_fft=2048, hop_length=512, n_mels=128, segment_seconds=3.0)
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def _trained_like(name: str) -> torch.nn.Module:
    """A model whose state differs from a fresh build (BatchNorm running stats moved too)."""
    torch.manual_seed(1)
    model = build_model(name, PARAMS.frames, PARAMS.n_mfcc, len(GENRES), dropout=0.2)
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model(torch.randn(8, PARAMS.frames, PARAMS.n_mfcc))  # updates BatchNorm running statistics
    return model.eval()


def _save(path: str | Path, name: str = "cnn", synthetic: bool = True) -> tuple[torch.nn.Module, np.ndarray,
                                                                                 np.ndarray]:
    model = _trained_like(name)
    rng = np.random.default_rng(0)
    mean = rng.normal(-20, 50, PARAMS.n_mfcc).astype(np.float32)
    std = rng.uniform(5, 40, PARAMS.n_mfcc).astype(np.float32)
    hparams = {"hidden": 512 if name == "ann" else 64, "dropout": 0.2, "weight_decay": 0.0, "lr": 1e-4}
    features = {**dataclasses.asdict(PARAMS), "frames": PARAMS.frames}
    metrics = {"test": {"segment_accuracy": 0.5, "track_accuracy": 0.6}}
    save_model(str(path), model, name=name, hparams=hparams, features=features, genres=GENRES, mean=mean, std=std,
               metrics=metrics, synthetic=synthetic)
    return model, mean, std


@pytest.mark.parametrize("name", ["ann", "cnn", "lstm"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    model, mean, std = _save(tmp_path / "m", name)
    # model.json (written last) names the one committed attempt that holds the weights; nothing else is left
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["attempts", META]
    attempt = json.loads((tmp_path / "m" / META).read_text())["attempt"]
    assert [p.name for p in (tmp_path / "m" / attempt).iterdir()] == [WEIGHTS]
    assert len(list((tmp_path / "m" / "attempts").iterdir())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left behind

    loaded = load_model(str(tmp_path / "m"))
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == name and loaded.genres == GENRES and loaded.features == PARAMS
    assert not loaded.module.training
    assert np.array_equal(loaded.mean.numpy(), mean) and np.array_equal(loaded.std.numpy(), std)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.module.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k

    meta = json.loads((tmp_path / "m" / META).read_text())
    assert meta["model"] == name and meta["synthetic"] is True and meta["frames"] == 130
    assert meta["features"] == dataclasses.asdict(PARAMS)
    assert meta["genres"] == GENRES and meta["metrics"]["test"]["track_accuracy"] == 0.6
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["raygenre"] == raygenre.__version__
    assert meta["created"] and meta["hparams"]["dropout"] == 0.2

    x = np.random.default_rng(1).normal(-20, 40, (4, 130, 13)).astype(np.float32)
    probs = loaded.predict_proba(x)
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(model((torch.from_numpy(x) - torch.from_numpy(mean)) / torch.from_numpy(std)), -1)
    assert np.allclose(probs, expected.numpy(), atol=1e-6)  # standardises with the stored stats, then softmax
    assert np.allclose(loaded.predict_proba(torch.from_numpy(x)), probs, atol=1e-6)  # tensors too
    assert loaded.predict_proba(x[0]).shape == (1, 10)  # a single segment
    assert loaded.predict_proba(x[:0]).shape == (0, 10)
    many = np.random.default_rng(2).normal(-20, 40, (CPU_CHUNK * 2 + 5, 130, 13)).astype(np.float32)
    one_by_one = np.concatenate([loaded.predict_proba(m) for m in many])
    assert np.allclose(loaded.predict_proba(many), one_by_one, atol=1e-6)  # chunking changes nothing
    assert loaded.to("cpu") is loaded


def test_raygenre_load_model_and_file_uri(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/uri-model"
    _save(uri, "ann", synthetic=False)
    loaded = raygenre.load_model(uri)
    assert loaded.name == "ann" and loaded.meta["synthetic"] is False
    assert loaded.hparams["hidden"] == 512


def test_overwrite_is_atomic_and_complete(tmp_path: Path) -> None:
    _save(tmp_path / "m", "ann")
    _save(tmp_path / "m", "lstm")  # replaces the folder as a whole
    assert load_model(str(tmp_path / "m")).name == "lstm"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_predict_proba_checks_shape(tmp_path: Path) -> None:
    _save(tmp_path / "m", "cnn")
    loaded = load_model(str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"expected MFCC of shape \(batch, 130, 13\)"):
        loaded.predict_proba(np.zeros((2, 87, 13), dtype=np.float32))


class _Exploit:
    """Pickles into 'run exec(code)' on load: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_the_exploit_is_real(tmp_path: Path) -> None:
    """Sanity check of the payload used below: unpickling it does run code."""
    marker = tmp_path / "ran"
    torch.save({"state": _Exploit(marker)}, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_refuses_pickled_checkpoints_without_running_them(tmp_path: Path, fmt: str) -> None:
    _save(tmp_path / "m", "cnn")
    marker = tmp_path / "pwned"
    weights = Path(weights_path(str(tmp_path / "m")))
    if fmt == "torch.save":
        torch.save({"model": _Exploit(marker)}, weights)
    else:
        weights.write_bytes(pickle.dumps(_Exploit(marker), protocol=4))
    with pytest.raises(ArtifactError, match="not a safetensors file") as info:
        load_model(str(tmp_path / "m"))
    assert "refusing to load pickled checkpoints because they can run code" in str(info.value)
    assert not marker.exists()


def test_clear_errors_for_missing_or_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_model(str(tmp_path / "empty"))

    _save(tmp_path / "m", "cnn")
    shutil.copytree(tmp_path / "m", tmp_path / "noweights")
    Path(weights_path(str(tmp_path / "noweights"))).unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_model(str(tmp_path / "noweights"))

    meta = json.loads((tmp_path / "m" / META).read_text())
    (tmp_path / "m" / META).write_text(json.dumps({**meta, "model": "resnet"}))
    with pytest.raises(ArtifactError, match="unknown model 'resnet'"):
        load_model(str(tmp_path / "m"))

    (tmp_path / "m" / META).write_text(json.dumps({**meta, "hparams": {**meta["hparams"], "hidden": 32}}))
    with pytest.raises(ArtifactError, match="does not match a cnn model"):
        load_model(str(tmp_path / "m"))

    (tmp_path / "m" / META).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(str(tmp_path / "m"))


def test_save_checks_its_inputs(tmp_path: Path) -> None:
    model = build_model("ann", 130, 13, 10)
    features = dataclasses.asdict(PARAMS)
    with pytest.raises(ArtifactError, match="unknown model name"):
        save_model(str(tmp_path / "a"), model, name="mlp", hparams={"hidden": 512, "dropout": 0.3}, features=features,
                   genres=GENRES, mean=np.zeros(13), std=np.ones(13), metrics={}, synthetic=True)
    with pytest.raises(ArtifactError, match="n_mfcc is 13"):
        save_model(str(tmp_path / "b"), model, name="ann", hparams={"hidden": 512, "dropout": 0.3}, features=features,
                   genres=GENRES, mean=np.zeros(20), std=np.ones(20), metrics={}, synthetic=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_extra_metadata_never_replaces_the_contract(tmp_path: Path) -> None:
    model = build_model("ann", 130, 13, 10)
    save_model(str(tmp_path / "m"), model, name="ann", hparams={"hidden": 512, "dropout": 0.3}, features=PARAMS,
               genres=GENRES, mean=np.zeros(13), std=np.ones(13), metrics={}, synthetic=True,
               extra={"features_dir": "/data/feats", "model": "cnn", "synthetic": False})
    meta = load_model(str(tmp_path / "m")).meta
    assert meta["features_dir"] == "/data/feats"
    assert meta["model"] == "ann" and meta["synthetic"] is True


TAMPERED = [  # (change to model.json, words the one-line error must hold)
    (lambda m: m["features"].update(hop_length=0), "features.hop_length must be an integer between 1 and 2048"),
    (lambda m: m["features"].update(n_mfcc="13"), "features.n_mfcc must be an integer"),
    (lambda m: m["features"].update(sample_rate=1), "features.sample_rate"),
    (lambda m: m["features"].update(segment_seconds=-3), "features.segment_seconds"),
    (lambda m: m.update(features=[22050, 13]), "features must be an object"),
    (lambda m: m.update(frames=129), "frames is 129 but the feature parameters give 130"),
    (lambda m: m.update(genres="abc"), "genres must be a list"),
    (lambda m: m.update(genres=[*GENRES[:-1], "blues"]), "genres lists ['blues'] twice"),
    (lambda m: m.update(genres=GENRES[:5]), "does not match a cnn model"),
    (lambda m: m.update(format_version=99), "format_version 99 is unknown"),
    (lambda m: m.update(format="something-else"), "format 'something-else'"),
    (lambda m: m["hparams"].update(dropout=2), "hparams.dropout"),
    (lambda m: m.update(hparams=[64]), "hparams must be an object"),
]


@pytest.mark.parametrize(("tamper", "words"), TAMPERED)
def test_tampered_model_json_is_one_line_naming_the_field(tmp_path: Path, tamper, words: str) -> None:
    _save(tmp_path / "m", "cnn")
    meta = json.loads((tmp_path / "m" / META).read_text())
    tamper(meta)
    (tmp_path / "m" / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        load_model(str(tmp_path / "m"))
    assert words in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "m" / META).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize(("key", "value", "words"), [
    ("norm.std", 0.0, "norm.std must be positive"),
    ("norm.std", float("nan"), "norm.std holds non-finite values"),
    ("norm.mean", float("inf"), "norm.mean holds non-finite values"),
    ("out.bias", float("nan"), "weight out.bias holds non-finite values"),
])
def test_non_finite_or_zero_statistics_and_weights_are_refused(tmp_path: Path, key: str, value: float,
                                                              words: str) -> None:
    from safetensors.torch import load_file, save_file

    _save(tmp_path / "m", "cnn")
    weights = weights_path(str(tmp_path / "m"))
    tensors = load_file(weights)
    tensors[key][0] = value
    save_file(tensors, weights)
    with pytest.raises(ArtifactError, match=words):
        load_model(str(tmp_path / "m"))


def test_truncated_weights_are_called_truncated(tmp_path: Path) -> None:
    _save(tmp_path / "m", "cnn")
    weights = Path(weights_path(str(tmp_path / "m")))
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match="truncated or damaged safetensors file") as info:
        load_model(str(tmp_path / "m"))
    assert "pickle" not in str(info.value)

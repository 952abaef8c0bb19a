"""The built-in synthetic dataset: generated once into the workspace, featurized once, then reused.

Every command that needs data and was given none uses it, and says so: it is not real music.
"""

from __future__ import annotations

from collections.abc import Callable

from raygenre import workspace
from raygenre.config import FeaturizeConfig, SynthConfig, load_config
from raygenre.data.featurize import featurize
from raygenre.data.synth.dataset import synthesize
from raygenre.data.table import MANIFEST


def ensure_dataset(say: Callable[[str], None] = print) -> str:
    """Generate the built-in synthetic dataset into ``$RAYGENRE_HOME`` if absent; return its folder."""
    out = workspace.builtin_dataset_dir()
    if not (out / "synth.json").exists():
        say(f"No dataset given: generating the built-in SYNTHETIC dataset into {out} (one time; not real music).")
    else:
        say(f"No dataset given: using the built-in SYNTHETIC dataset at {out} (not real music).")
    synthesize(out, load_config(SynthConfig))  # a no-op when it is already complete
    return str(out)


def ensure_features(address: str | None = None, say: Callable[[str], None] = print) -> str:
    """Featurize the built-in dataset into ``$RAYGENRE_HOME`` if needed; return the feature table folder."""
    out = workspace.builtin_features_dir()
    if (out / MANIFEST).exists():
        say(f"No --features given: using the built-in SYNTHETIC feature table at {out}.")
        return str(out)
    dataset = ensure_dataset(say)
    say(f"Featurizing it into {out} (one time).")
    featurize(dataset, str(out), load_config(FeaturizeConfig), address=address)
    return str(out)

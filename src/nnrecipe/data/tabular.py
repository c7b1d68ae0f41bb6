"""Tabular data: a CSV or Parquet file (data=tabular), and bundled offline examples per task.

    python src/train.py data=tabular data.path=houses.csv data.target=price    # task: regression
    python src/train.py data=diabetes           # regression (scikit-learn's diabetes, 442 rows)
    python src/train.py data=breast_cancer      # binary classification (569 rows)
    python src/train.py data=digits_multilabel  # multi-label: is even, > 4, has a loop, is prime

Features become a [N, F, 1, 1] tensor: F "channels" of a 1x1 image, so build_data standardises
every feature column with the training split's mean and std like image channels, and model=mlp
or model=linear (which flatten) take them as they are. Categorical columns (data.categorical,
or every non-numeric column) are one-hot encoded with the categories seen in the training split.
The split is the task's own (stratified for classes, binned on the target for regression).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from nnrecipe.data.splits import DataBundle, TensorSplit
from nnrecipe.errors import UserError

KINDS = ("classes", "values", "labels")


def tabular(path: str | None = None, target=None, columns=None, categorical=None,
            targets: str = "values", seed: int = 0, val_fraction: float = 0.15,
            test_fraction: float = 0.15, **cfg) -> DataBundle:
    """A CSV/Parquet file: `target` (a column, or a list of columns: several regression targets
    or multi-label 0/1 columns), `columns` (the feature columns; null: every other column)."""
    if not path:
        raise UserError("data.path must name a .csv or .parquet file (data.path=...)")
    return frame_bundle(_read(Path(path)), target, columns, categorical, targets,
                        _split_seed(cfg, seed), [val_fraction, test_fraction], source=path)


def diabetes(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, **cfg):
    """scikit-learn's diabetes: 442 patients, 10 measurements, disease progression after a year
    (25..346, mean 152): regression."""
    from sklearn.datasets import load_diabetes  # its CSV ships with scikit-learn: offline

    frame = load_diabetes(as_frame=True, scaled=False).frame
    return frame_bundle(frame, "target", None, None, "values", _split_seed(cfg, seed),
                        [val_fraction, test_fraction], source="diabetes")


def breast_cancer(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  **cfg):
    """scikit-learn's breast cancer (Wisconsin): 569 tumours, 30 features, malignant (212) or
    benign (357): binary classification."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.assign(target=data.target.map(dict(enumerate(data.target_names))))
    return frame_bundle(frame, "target", None, None, "classes", _split_seed(cfg, seed),
                        [val_fraction, test_fraction], source="breast_cancer")


# digit -> its labels in digits_multilabel
DIGIT_LABELS = {
    "even": lambda d: d % 2 == 0,
    "greater_than_4": lambda d: d > 4,
    "has_loop": lambda d: np.isin(d, [0, 6, 8, 9]),
    "prime": lambda d: np.isin(d, [2, 3, 5, 7]),
}


def digits_multilabel(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                      **cfg) -> DataBundle:
    """The 8x8 digits as images with four yes/no labels each (is even, > 4, has a loop, is
    prime): multi-label, any number of labels per image."""
    from nnrecipe.data.sources import _bundled_digits
    from nnrecipe.tasks import MultiLabel

    rows = _bundled_digits()
    x = torch.tensor(rows[:, :-1], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    digit = rows[:, -1].astype(np.int64)
    y = torch.tensor(np.stack([f(digit) for f in DIGIT_LABELS.values()], 1), dtype=torch.float32)
    parts = MultiLabel().split(y, [val_fraction, test_fraction], _split_seed(cfg, seed))
    return DataBundle(*(TensorSplit(x[i], y[i]) for i in parts), class_names=list(DIGIT_LABELS),
                      in_chans=1, image_size=8, targets="labels")


def frame_bundle(frame, target, columns, categorical, targets: str, seed: int,
                 fractions: list[float], source: str = "the table") -> DataBundle:
    """A pandas DataFrame -> DataBundle: targets of kind `targets`, features one-hot/float;
    `seed` draws the split."""
    if targets not in KINDS:
        raise UserError(f"data.targets={targets!r}: use one of {', '.join(KINDS)}")
    names = _names(target, "data.target")
    if not names:
        raise UserError(f"data.target must name the target column(s) of {source} "
                        f"(columns: {', '.join(map(str, frame.columns[:20]))})")
    features = _names(columns, "data.columns") or [c for c in frame.columns if c not in names]
    _require(frame, names + features, source)
    frame = frame.dropna(subset=names)  # a row without a target teaches nothing
    y, class_names = _targets(frame[names], targets, source)
    from nnrecipe.tasks import Classification, MultiLabel, Regression

    splitter = {"classes": Classification, "values": Regression, "labels": MultiLabel}[targets]
    parts = splitter().split(y, fractions, seed)
    x = _features(frame[features], categorical, parts[0], source)
    return DataBundle(*(TensorSplit(x[i], y[i]) for i in parts), class_names=class_names,
                      in_chans=x.shape[1], image_size=1, targets=targets)


def _read(path: Path):
    import pandas as pd  # only for tables

    if not path.exists():
        raise UserError(f"data.path={path}: no such file (relative paths start at the folder "
                        f"you run from)")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            return pd.read_parquet(path)
        if ".csv" in suffix or ".tsv" in suffix or suffix.endswith(".txt"):
            return pd.read_csv(path, sep=None, engine="python")  # sniffs , ; or tab
    except Exception as e:
        raise UserError(f"data.path={path} could not be read as a table: {e}") from e
    raise UserError(f"data.path={path}: use a .csv (.csv.gz, .tsv) or .parquet file")


def _names(value, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise UserError(f"{key}={value!r}: give a column name or a list of them")


def _require(frame, names: list[str], source: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        import difflib

        hints = [difflib.get_close_matches(m, list(map(str, frame.columns)), n=1) for m in missing]
        close = [f"{m} (did you mean {h[0]}?)" if h else m for m, h in zip(missing, hints)]
        raise UserError(f"{source} has no column {', '.join(close)}; its columns: "
                        f"{', '.join(map(str, frame.columns[:30]))}")


def _targets(frame, kind: str, source: str) -> tuple[torch.Tensor, list[str]]:
    """Target columns -> (targets tensor, one name per model output)."""
    if kind == "classes":
        if frame.shape[1] != 1:
            raise UserError(f"classification takes one target column, got {list(frame.columns)}")
        values = frame.iloc[:, 0]
        classes = sorted(values.unique(), key=str)
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor(values.map(index).to_numpy(), dtype=torch.long)
        return y, [str(c) for c in classes]
    try:
        y = torch.tensor(frame.to_numpy(dtype=np.float64), dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise UserError(f"the target columns {list(frame.columns)} of {source} must be numbers "
                        f"for {kind} targets ({e})") from None
    if kind == "labels" and not ((y == 0) | (y == 1)).all():
        raise UserError(f"multi-label targets must be 0/1 columns; {list(frame.columns)} of "
                        f"{source} hold other values")
    names = [str(c) for c in frame.columns]
    return (y[:, 0] if kind == "values" and y.shape[1] == 1 else y), names


def _features(frame, categorical, train: np.ndarray, source: str) -> torch.Tensor:
    """Numeric columns as floats (missing values: the training mean), categorical columns
    one-hot with the training split's categories -> [N, F, 1, 1]."""
    import pandas as pd

    cats = _names(categorical, "data.categorical")
    _require(frame, cats, source)
    cats += [c for c in frame.columns if c not in cats and not pd.api.types.is_numeric_dtype(
        frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    blocks = []
    for column in frame.columns:
        values = frame[column]
        if column in cats:
            seen = sorted(values.iloc[train].dropna().astype(str).unique())
            blocks += [(values.astype(str) == c).to_numpy(np.float32)[:, None] for c in seen]
            continue
        v = values.to_numpy(np.float64)
        if np.isnan(v).any():
            fill = np.nanmean(v[train])
            warnings.warn(f"{source}: {int(np.isnan(v).sum())} missing values in column "
                          f"{column!r} filled with its training mean {fill:.4g}", stacklevel=2)
            v = np.where(np.isnan(v), fill, v)
        blocks.append(v.astype(np.float32)[:, None])
    if not blocks:
        raise UserError(f"{source} has no feature columns left: check data.columns/data.target")
    x = torch.from_numpy(np.concatenate(blocks, 1))
    constant = (x[train] == x[train][:1]).all(0)  # no information, and no spread to scale by
    if constant.any() and not constant.all():
        warnings.warn(f"{source}: {int(constant.sum())} feature column(s) constant on the "
                      f"training split dropped", stacklevel=2)
        x = x[:, ~constant]
    return x[:, :, None, None]


def _split_seed(cfg: dict, seed: int) -> int:
    """data.split_seed when the data config has one, else the run's seed."""
    return cfg["split_seed"] if cfg.get("split_seed") is not None else seed

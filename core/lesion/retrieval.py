"""Similar confirmed cases: nearest neighbours of an image among the reference set (HAM10000 train + val, ISIC 2017
train) in mask-CN's penultimate feature space.

An embedding is the pooled feature vector, L2-normalised, projected by PCA (fitted on the reference set) and
normalised again; similarity is the cosine. The index ships in weights/ as case_index.safetensors (vectors fp16,
PCA mean and components) + case_index.csv (image_id, source, dx, dx_type per row), both sha256-listed in the model
card and rebuilt by calibration.evaluate whenever the weights change. No image is shipped.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.decisions.model_card import ModelCard

INDEX_FILE = "case_index.safetensors"
TABLE_FILE = "case_index.csv"
TABLE_COLUMNS = ["image_id", "source", "dx", "dx_type"]
DX_TYPE_WORDS = {"histo": "histopathology", "follow_up": "follow-up", "consensus": "expert consensus",
                 "confocal": "confocal microscopy", "isic2017": "ISIC 2017 challenge label"}


@dataclass
class CaseIndex:
    table: pd.DataFrame           # one row per reference image: TABLE_COLUMNS
    vectors: torch.Tensor         # (N, d) float32, unit length
    mean: torch.Tensor            # (K,) PCA mean of the normalised pooled features
    components: torch.Tensor      # (d, K) PCA components

    @classmethod
    def fit(cls, pooled: np.ndarray, table: pd.DataFrame, dims: int) -> "CaseIndex":
        from sklearn.decomposition import PCA

        unit = F.normalize(torch.as_tensor(pooled, dtype=torch.float32), dim=1)
        pca = PCA(n_components=min(dims, len(unit) - 1, unit.shape[1]), random_state=0).fit(unit.numpy())
        index = cls(table[TABLE_COLUMNS].reset_index(drop=True).copy(), torch.empty(0),
                    torch.as_tensor(pca.mean_, dtype=torch.float32), torch.as_tensor(pca.components_, dtype=torch.float32))
        index.vectors = index.embed(pooled)
        return index

    def embed(self, pooled) -> torch.Tensor:
        unit = F.normalize(torch.as_tensor(pooled, dtype=torch.float32), dim=1)
        return F.normalize((unit - self.mean) @ self.components.T, dim=1)

    def similarities(self, embedded: torch.Tensor) -> torch.Tensor:
        return embedded @ self.vectors.T

    def nearest(self, pooled, k: int = 8) -> pd.DataFrame:
        """The k most similar reference cases of one image, nearest first, with a `similarity` column."""
        sims = self.similarities(self.embed(pooled))[0]
        top = torch.topk(sims, min(k, len(sims)))
        rows = self.table.iloc[top.indices.numpy()].copy()
        rows["similarity"] = top.values.numpy().round(4)
        rows["confirmed_by"] = rows["dx_type"].map(lambda t: DX_TYPE_WORDS.get(t, t or "not recorded"))
        return rows.reset_index(drop=True)

    def knn_distance(self, pooled, k: int = 10) -> np.ndarray:
        """1 - mean cosine similarity to the k nearest reference cases, per image (an uncertainty / OOD score)."""
        sims = self.similarities(self.embed(pooled))
        return (1 - torch.topk(sims, min(k, sims.shape[1]), dim=1).values.mean(1)).numpy()

    def save(self, weights_dir: Path) -> tuple[Path, Path]:
        from safetensors.torch import save_file

        tensors = {"vectors": self.vectors.half().contiguous(), "pca_mean": self.mean.contiguous(),
                   "pca_components": self.components.contiguous()}
        save_file(tensors, str(weights_dir / INDEX_FILE))
        self.table.to_csv(weights_dir / TABLE_FILE, index=False)
        return weights_dir / INDEX_FILE, weights_dir / TABLE_FILE

    @classmethod
    def load(cls, weights_dir: Path, card: ModelCard) -> "CaseIndex":
        """The shipped index, sha256-checked against the card."""
        from core.io.weights_io import load_verified, verified_bytes

        tensors = load_verified(weights_dir, INDEX_FILE, card)
        table = pd.read_csv(io.BytesIO(verified_bytes(weights_dir, TABLE_FILE, card)), dtype=str, keep_default_na=False)
        return cls(table, tensors["vectors"].float(), tensors["pca_mean"], tensors["pca_components"])

"""Reference values of the contrastive losses, written the way the papers' public code
computes them (SupConLoss of Khosla et al., with base_temperature = temperature; NT-Xent as
cross-entropy over the 2N-1 other samples), in PyTorch.

Usage: loss_reference.py DIR. Reads DIR/features.npy (float32 [2n, d], L2-normalised rows),
DIR/labels.npy (int64 [n]) and DIR/temperature.txt; prints JSON {"supcon": .., "ntxent": ..}.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def supcon(features, labels, temperature):
    # features: [bsz, n_views, d] as in the reference implementation
    bsz = features.shape[0]
    labels = labels.view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor = contrast_feature
    logits = torch.matmul(anchor, contrast_feature.T) / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(contrast_count, contrast_count)
    logits_mask = torch.ones_like(mask)
    logits_mask.fill_diagonal_(0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).mean()


def ntxent(z, temperature):
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def main():
    root = Path(sys.argv[1])
    z = torch.from_numpy(np.load(root / "features.npy")).double()
    labels = torch.from_numpy(np.load(root / "labels.npy"))
    t = float((root / "temperature.txt").read_text())
    n = z.shape[0] // 2
    views = torch.stack([z[:n], z[n:]], dim=1)
    print(json.dumps({"supcon": supcon(views, labels, t).item(), "ntxent": ntxent(z, t).item()}))


if __name__ == "__main__":
    main()

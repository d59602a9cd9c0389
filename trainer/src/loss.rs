//! Training losses: cross-entropy, supervised contrastive (Khosla et al. 2020) and SimCLR's
//! NT-Xent (Chen et al. 2020).

use tch::{Kind, Tensor};

/// Which loss trains the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Ce,
    Supcon,
    Simclr,
}

impl std::str::FromStr for LossKind {
    type Err = crate::error::TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ce" => Ok(LossKind::Ce),
            "supcon" => Ok(LossKind::Supcon),
            "simclr" => Ok(LossKind::Simclr),
            _ => Err(crate::error::TrainError::Invalid(format!(
                "unknown loss {s:?} (ce, supcon or simclr)"
            ))),
        }
    }
}

/// SupCon: for each anchor, the mean over its positives (same label, not itself) of
/// `log(exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t))`, negated and averaged over
/// anchors that have positives. `features` are L2-normalised `[n, d]`, `labels` `[n]`.
pub fn supcon(features: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    let n = features.size()[0];
    let (device, kind) = (features.device(), features.kind());
    let logits = features.matmul(&features.tr()) / temperature;
    let eye = Tensor::eye(n, (Kind::Bool, device));
    let log_prob = logits
        .masked_fill(&eye, f64::NEG_INFINITY)
        .log_softmax(1, kind)
        .masked_fill(&eye, 0.0);
    let positives = labels
        .unsqueeze(0)
        .eq_tensor(&labels.unsqueeze(1))
        .logical_and(&eye.logical_not())
        .to_kind(kind);
    let counts = positives.sum_dim_intlist([1i64].as_slice(), false, kind);
    let per_anchor = (log_prob * &positives).sum_dim_intlist([1i64].as_slice(), false, kind)
        / counts.clamp_min(1.0);
    let has = counts.gt(0.0).to_kind(kind);
    -(per_anchor * &has).sum(kind) / has.sum(kind).clamp_min(1.0)
}

/// NT-Xent on two views stacked as `[2n, d]` (rows `i` and `i + n` are the pair): SupCon
/// where each sample's only positive is its other view.
pub fn nt_xent(features: &Tensor, temperature: f64) -> Tensor {
    let n = features.size()[0] / 2;
    let ids = Tensor::arange(n, (Kind::Int64, features.device()));
    supcon(features, &Tensor::cat(&[&ids, &ids], 0), temperature)
}

/// Cross-entropy of logits `[n, classes]` against integer labels `[n]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(labels)
}

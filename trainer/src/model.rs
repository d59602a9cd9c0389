//! Encoders: ResNet-18 in its CIFAR form (3x3 stem, no max-pool, 512-d embedding), as in
//! the paper, and a compact edge encoder built only from operations that export cleanly to
//! ONNX and run fast in tract (convolution, batch norm, ReLU, addition, average pooling,
//! flatten, linear). The embedding is the penultimate layer; heads sit on top of it.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Resnet18,
    Edge,
    /// EfficientNet-Lite0, ImageNet-pretrained weights imported with `import-pretrained`.
    EfficientnetLite0,
}

impl std::str::FromStr for Arch {
    type Err = crate::error::TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resnet18" => Ok(Arch::Resnet18),
            "edge" => Ok(Arch::Edge),
            "efficientnet-lite0" | "efficientnet_lite0" => Ok(Arch::EfficientnetLite0),
            _ => Err(crate::error::TrainError::Invalid(format!(
                "unknown architecture {s:?} (resnet18, edge or efficientnet-lite0)"
            ))),
        }
    }
}

/// What sits on the embedding during training (never exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Head {
    /// A linear classifier (cross-entropy).
    Classifier { classes: usize },
    /// Linear-ReLU-linear projection to a normalised space (SupCon, SimCLR).
    Projection { dim: usize },
}

/// Everything needed to rebuild the network; saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Channel multiplier of the edge encoder (1.0: widths 16-32-64-128).
    pub width: f64,
    /// Embedding size of the edge encoder (ResNet-18's is 512); 0 takes the pooled
    /// features of the last stage as the embedding, with no linear layer on top.
    pub embed_dim: usize,
    pub head: Head,
}

impl ModelConfig {
    pub fn embedding_dim(&self) -> usize {
        match self.arch {
            Arch::Resnet18 => 512,
            Arch::Edge if self.embed_dim == 0 => edge_width(128.0, self.width) as usize,
            Arch::Edge => self.embed_dim,
            Arch::EfficientnetLite0 => crate::efficientnet::FEATURES as usize,
        }
    }
}

/// Channels of an edge encoder stage of nominal width `c` at multiplier `width`.
fn edge_width(c: f64, width: f64) -> i64 {
    ((c * width).round() as i64).max(4)
}

/// Convolution (no bias) followed by batch norm; folded into one convolution at export.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    /// Kept here because tch's layer configurations are private; the export needs them.
    pub stride: i64,
    pub eps: f64,
}

impl ConvBn {
    fn new(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> Self {
        let cfg = nn::ConvConfig {
            // a strided 1x1 convolution subsamples first and convolves at stride 1 (see
            // `forward_t`); the exported graph keeps the stride (`self.stride`)
            stride: if k == 1 { 1 } else { stride },
            padding: k / 2,
            bias: false,
            ..Default::default()
        };
        let bn_cfg = nn::BatchNormConfig::default();
        let eps = bn_cfg.eps;
        Self {
            conv: nn::conv2d(&p / "conv", cin, cout, k, cfg),
            bn: nn::batch_norm2d(&p / "bn", cout, bn_cfg),
            stride,
            eps,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        // A strided 1x1 convolution as subsampling and a stride-1 convolution: the same
        // values by a route that avoids oneDNN's strided 1x1 backward-weights kernel on
        // channels-last input, which with fewer input channels than its block (8 with
        // AVX2, 16 with AVX-512) writes past its workspace and gives wrong weight
        // gradients or hangs (oneDNN issue 6035; it hung the trainer's tests on an
        // AVX2-only CPU).
        let x = if self.stride > 1 && self.conv.ws.size()[2] == 1 {
            x.slice(2, 0, None, self.stride)
                .slice(3, 0, None, self.stride)
        } else {
            x.shallow_clone()
        };
        x.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// A basic residual block: `relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`.
#[derive(Debug)]
pub struct Block {
    pub a: ConvBn,
    pub b: ConvBn,
    pub shortcut: Option<ConvBn>,
}

impl Block {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        Self {
            a: ConvBn::new(&p / "a", cin, cout, 3, stride),
            b: ConvBn::new(&p / "b", cout, cout, 3, 1),
            shortcut: (stride != 1 || cin != cout)
                .then(|| ConvBn::new(&p / "shortcut", cin, cout, 1, stride)),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.a.forward_t(x, train).relu();
        let y = self.b.forward_t(&y, train);
        let s = match &self.shortcut {
            Some(s) => s.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (y + s).relu()
    }
}

/// The exported part: image in, embedding out. One encoder lives per network, so the
/// variants' different sizes cost nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Encoder {
    /// ResNet-18 (CIFAR form) or the compact edge encoder.
    Cifar(CifarEncoder),
    /// EfficientNet-Lite: the pooled 1280 head features.
    Lite(crate::efficientnet::LiteEncoder),
}

impl Encoder {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        match cfg.arch {
            Arch::Resnet18 | Arch::Edge => Encoder::Cifar(CifarEncoder::new(p, cfg)),
            Arch::EfficientnetLite0 => Encoder::Lite(crate::efficientnet::LiteEncoder::new(
                p,
                crate::efficientnet::LiteScale::LITE0,
            )),
        }
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        match self {
            Encoder::Cifar(e) => e.dim,
            Encoder::Lite(_) => crate::efficientnet::FEATURES as usize,
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Encoder::Cifar(e) => e.forward_t(x, train),
            Encoder::Lite(e) => e.forward_t(x, train),
        }
    }
}

/// ResNet-18 in its CIFAR form, or the compact edge encoder.
#[derive(Debug)]
pub struct CifarEncoder {
    pub stem: ConvBn,
    pub blocks: Vec<Block>,
    /// Edge encoder only: pooled features to the embedding.
    pub fc: Option<nn::Linear>,
    pub dim: usize,
}

impl CifarEncoder {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let (stem_out, stages): (i64, Vec<(i64, usize, i64)>) = match cfg.arch {
            Arch::Resnet18 | Arch::EfficientnetLite0 => {
                (64, vec![(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)])
            }
            Arch::Edge => {
                let w = |c: f64| edge_width(c, cfg.width);
                (
                    w(16.0),
                    vec![
                        (w(16.0), 1, 1),
                        (w(32.0), 1, 2),
                        (w(64.0), 1, 2),
                        (w(128.0), 1, 2),
                    ],
                )
            }
        };
        let stem = ConvBn::new(&p / "stem", 3, stem_out, 3, 1);
        let mut blocks = Vec::new();
        let mut cin = stem_out;
        for (cout, n, stride) in stages {
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(Block::new(&p / "blocks" / blocks.len(), cin, cout, s));
                cin = cout;
            }
        }
        let fc = match cfg.arch {
            Arch::Resnet18 | Arch::EfficientnetLite0 => None,
            Arch::Edge if cfg.embed_dim == 0 => None,
            Arch::Edge => Some(nn::linear(
                &p / "fc",
                cin,
                cfg.embed_dim as i64,
                Default::default(),
            )),
        };
        Self {
            stem,
            blocks,
            fc,
            dim: cfg.embedding_dim(),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train).relu();
        for b in &self.blocks {
            y = b.forward_t(&y, train);
        }
        let y = y.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        match &self.fc {
            Some(fc) => y.apply(fc),
            None => y,
        }
    }
}

/// Encoder plus the training head.
#[derive(Debug)]
pub struct Net {
    pub config: ModelConfig,
    pub encoder: Encoder,
    head: Vec<nn::Linear>,
}

impl Net {
    pub fn new(root: &nn::Path, config: ModelConfig) -> Self {
        let encoder = Encoder::new(root / "encoder", &config);
        let d = encoder.dim() as i64;
        let h = root / "head";
        let head = match config.head {
            Head::Classifier { classes } => {
                vec![nn::linear(&h / "0", d, classes as i64, Default::default())]
            }
            Head::Projection { dim } => vec![
                nn::linear(&h / "0", d, d, Default::default()),
                nn::linear(&h / "1", d, dim as i64, Default::default()),
            ],
        };
        Self {
            config,
            encoder,
            head,
        }
    }

    /// The embedding (before any head).
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        self.encoder.forward_t(x, train)
    }

    /// Head output: class logits, or the L2-normalised projection.
    pub fn head(&self, embedding: &Tensor) -> Tensor {
        match self.config.head {
            Head::Classifier { .. } => embedding.apply(&self.head[0]),
            Head::Projection { .. } => {
                let z = embedding.apply(&self.head[0]).relu().apply(&self.head[1]);
                let norm = z.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
                z / norm
            }
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head(&self.embed(x, train))
    }
}

/// Number of trainable parameters under a var store path prefix.
pub fn parameter_count(vs: &nn::VarStore, prefix: &str) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, t)| name.starts_with(prefix) && t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A strided 1x1 `ConvBn` on a channels-last batch with fewer input channels than any
    /// oneDNN block gives the values and weight gradients of a plain stride-2 convolution
    /// on a contiguous batch. Through oneDNN's own strided 1x1 kernel the first two shapes
    /// gave weight gradients wrong by up to 98% of their size on an AVX2-only CPU (and a
    /// 64x64 batch hung), oneDNN issue 6035.
    #[test]
    fn a_strided_1x1_conv_matches_the_plain_convolution_on_channels_last_input() {
        tch::manual_seed(3);
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        for (n, h, w) in [(24, 16, 16), (32, 32, 32), (8, 15, 17)] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let cb = ConvBn::new(vs.root() / "s", 4, 8, 1, 2);
            let mut reference_w = cb.conv.ws.detach().copy().set_requires_grad(true);
            let x = Tensor::randn([n, 4, h, w], opts);
            let channels_last = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            // the output is ceil(size / 2) either way
            let r = Tensor::randn([n, 8, (h + 1) / 2, (w + 1) / 2], opts);
            let ours = cb.forward_t(&channels_last, false);
            (&ours * &r).sum(tch::Kind::Float).backward();
            reference_w.zero_grad();
            let theirs = x
                .conv2d(&reference_w, None::<Tensor>, [2, 2], [0, 0], [1, 1], 1)
                .apply_t(&cb.bn, false);
            (&theirs * &r).sum(tch::Kind::Float).backward();
            let d = (&ours - &theirs).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{n}x{h}x{w}: outputs differ by {d}");
            let (g, want) = (cb.conv.ws.grad(), reference_w.grad());
            let d = (&g - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(
                scale > 1.0 && d <= 1e-4 * scale,
                "{n}x{h}x{w}: weight gradients differ by {d} of {scale}"
            );
        }
    }
}

//! EfficientNet-Lite (Tan & Le 2019; the "Lite" variants for edge accelerators): an
//! ImageNet-pretrained backbone built from mobile inverted bottlenecks. Lite differs from
//! EfficientNet in what quantizes and exports well: ReLU6 instead of swish, no
//! squeeze-and-excitation, and a stem and head that do not scale with the width.
//!
//! The layers follow the reference PyTorch port (`efficientnet-lite-pytorch` 0.1.0) so its
//! weights load by name: TensorFlow "same" padding (asymmetric for even inputs with stride
//! 2), batch norm with epsilon 1e-3, and the variables named as there (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`). The embedding is the 1280 pooled
//! features after the head convolution.

use tch::nn;
use tch::Tensor;

/// Width and depth multipliers: Lite0 is (1.0, 1.0); Lite1-4 scale them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiteScale {
    pub width: f64,
    pub depth: f64,
}

impl LiteScale {
    pub const LITE0: LiteScale = LiteScale {
        width: 1.0,
        depth: 1.0,
    };
}

/// One stage of the network: `repeats` blocks with `kernel`x`kernel` depthwise convolution,
/// the first with `stride`, expanding channels by `expand`.
#[derive(Debug, Clone, Copy)]
struct Stage {
    repeats: usize,
    kernel: i64,
    stride: i64,
    expand: i64,
    input: i64,
    output: i64,
}

/// EfficientNet-Lite0's stages (`efficientnet_lite_builder.py`).
const STAGES: [Stage; 7] = [
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 1,
        input: 32,
        output: 16,
    },
    Stage {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand: 6,
        input: 16,
        output: 24,
    },
    Stage {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand: 6,
        input: 24,
        output: 40,
    },
    Stage {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand: 6,
        input: 40,
        output: 80,
    },
    Stage {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand: 6,
        input: 80,
        output: 112,
    },
    Stage {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand: 6,
        input: 112,
        output: 192,
    },
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 6,
        input: 192,
        output: 320,
    },
];

/// Channels of the stem and of the head's features (not scaled in Lite).
pub const STEM_CHANNELS: i64 = 32;
pub const FEATURES: i64 = 1280;

/// Where the embedding is taken. The published network pools the 1280 features of its head
/// convolution; the truncated backbone pools the last block's 320 instead: no 320->1280
/// convolution to run, and a 320x320 whitening matrix in the calibration (1280x1280 is
/// 3.7 MB of the bundle, compressed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LiteTap {
    #[default]
    Head,
    Blocks,
}

impl std::str::FromStr for LiteTap {
    type Err = crate::error::TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "head" => Ok(LiteTap::Head),
            "blocks" => Ok(LiteTap::Blocks),
            _ => Err(crate::error::TrainError::Invalid(format!(
                "--features {s:?}: expected head (after the head convolution) or blocks (the last block's, before it)"
            ))),
        }
    }
}

/// Batch norm as in the reference: TensorFlow's momentum 0.99 (PyTorch's 0.01), eps 1e-3.
pub const BN_EPS: f64 = 1e-3;

/// Channels scaled by the width multiplier, rounded to a multiple of 8 (never down by
/// more than 10%).
fn round_filters(filters: i64, width: f64) -> i64 {
    if width == 1.0 {
        return filters;
    }
    let divisor = 8.0;
    let scaled = filters as f64 * width;
    let mut rounded = ((scaled + divisor / 2.0) / divisor).floor() * divisor;
    rounded = rounded.max(divisor);
    if rounded < 0.9 * scaled {
        rounded += divisor;
    }
    rounded as i64
}

/// A convolution with TensorFlow "same" padding for any input size: the output is
/// `ceil(input / stride)`, the padding split with the extra pixel at the bottom and right.
#[derive(Debug)]
pub struct SameConv {
    pub conv: nn::Conv2D,
    pub kernel: i64,
    pub stride: i64,
    pub groups: i64,
}

impl SameConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: 0,
            groups,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(p, cin, cout, kernel, cfg),
            kernel,
            stride,
            groups,
        }
    }

    /// `(before, after)` padding of one spatial axis of size `size`.
    pub fn padding(&self, size: i64) -> (i64, i64) {
        let out = (size + self.stride - 1) / self.stride;
        let total = ((out - 1) * self.stride + self.kernel - size).max(0);
        (total / 2, total - total / 2)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let (top, bottom) = self.padding(h);
        let (left, right) = self.padding(w);
        if top + bottom + left + right == 0 {
            x.apply(&self.conv)
        } else {
            x.constant_pad_nd([left, right, top, bottom])
                .apply(&self.conv)
        }
    }
}

fn batch_norm(p: nn::Path, channels: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        channels,
        nn::BatchNormConfig {
            momentum: 0.01,
            eps: BN_EPS,
            ..Default::default()
        },
    )
}

/// aten's `relu6` (`hardtanh(0, 6)`), not `clamp(0, 6)`: the same values, but its
/// backward is one fused kernel where `clamp`'s is several passes over the activation
/// (the trainer bench: 1.12-1.13x slower a step at 64 and 96 px).
fn relu6(x: &Tensor) -> Tensor {
    x.relu6()
}

/// A mobile inverted bottleneck: 1x1 expansion (unless the ratio is 1), depthwise
/// convolution, 1x1 projection, and the identity added when shapes allow.
#[derive(Debug)]
pub struct MbConv {
    pub expand: Option<(SameConv, nn::BatchNorm)>,
    pub depthwise: (SameConv, nn::BatchNorm),
    pub project: (SameConv, nn::BatchNorm),
    pub residual: bool,
}

impl MbConv {
    fn new(p: nn::Path, input: i64, output: i64, kernel: i64, stride: i64, expand: i64) -> Self {
        let hidden = input * expand;
        Self {
            expand: (expand != 1).then(|| {
                (
                    SameConv::new(&p / "_expand_conv", input, hidden, 1, 1, 1),
                    batch_norm(&p / "_bn0", hidden),
                )
            }),
            depthwise: (
                SameConv::new(
                    &p / "_depthwise_conv",
                    hidden,
                    hidden,
                    kernel,
                    stride,
                    hidden,
                ),
                batch_norm(&p / "_bn1", hidden),
            ),
            project: (
                SameConv::new(&p / "_project_conv", hidden, output, 1, 1, 1),
                batch_norm(&p / "_bn2", output),
            ),
            residual: stride == 1 && input == output,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = match &self.expand {
            Some((conv, bn)) => relu6(&conv.forward(x).apply_t(bn, train)),
            None => x.shallow_clone(),
        };
        y = relu6(
            &self
                .depthwise
                .0
                .forward(&y)
                .apply_t(&self.depthwise.1, train),
        );
        y = self.project.0.forward(&y).apply_t(&self.project.1, train);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// EfficientNet-Lite up to the pooled features.
#[derive(Debug)]
pub struct LiteEncoder {
    pub stem: (SameConv, nn::BatchNorm),
    pub blocks: Vec<MbConv>,
    pub head: (SameConv, nn::BatchNorm),
    /// The stage each block belongs to.
    block_stage: Vec<usize>,
    /// Stages (with the stem) kept frozen in fine-tuning: their batch norms stay in eval
    /// mode, so their running statistics keep the pretrained values.
    frozen_stages: usize,
}

impl LiteEncoder {
    /// The network under `p` (variables named as in the reference port).
    pub fn new(p: nn::Path, scale: LiteScale) -> Self {
        let stem = (
            SameConv::new(&p / "_conv_stem", 3, STEM_CHANNELS, 3, 2, 1),
            batch_norm(&p / "_bn0", STEM_CHANNELS),
        );
        let mut blocks = Vec::new();
        let mut block_stage = Vec::new();
        let last = STAGES.len() - 1;
        let mut cin = STEM_CHANNELS;
        for (i, stage) in STAGES.iter().enumerate() {
            debug_assert!(i == 0 || cin == round_filters(stage.input, scale.width));
            let output = round_filters(stage.output, scale.width);
            // the first and last stages keep their depth: the stem and head are fixed
            let repeats = if i == 0 || i == last {
                stage.repeats
            } else {
                (scale.depth * stage.repeats as f64).ceil() as usize
            };
            for r in 0..repeats {
                let stride = if r == 0 { stage.stride } else { 1 };
                let path = &p / "_blocks" / blocks.len();
                blocks.push(MbConv::new(
                    path,
                    cin,
                    output,
                    stage.kernel,
                    stride,
                    stage.expand,
                ));
                block_stage.push(i);
                cin = output;
            }
        }
        let head = (
            SameConv::new(&p / "_conv_head", cin, FEATURES, 1, 1, 1),
            batch_norm(&p / "_bn1", FEATURES),
        );
        Self {
            stem,
            blocks,
            head,
            block_stage,
            frozen_stages: 0,
        }
    }

    /// Number of stages (blocks of one kernel, stride and width).
    pub fn stages(&self) -> usize {
        STAGES.len()
    }

    /// Freezes the stem and the first `stages` stages for fine-tuning; returns the variable
    /// name prefixes (under `encoder.`) whose gradients the caller turns off. 0 freezes
    /// nothing; the head convolution always trains.
    pub fn freeze(&mut self, stages: usize) -> Vec<String> {
        self.frozen_stages = stages.min(STAGES.len());
        if stages == 0 {
            return Vec::new();
        }
        let mut prefixes = vec!["_conv_stem.".to_string(), "_bn0.".to_string()];
        for (i, &stage) in self.block_stage.iter().enumerate() {
            if stage < self.frozen_stages {
                prefixes.push(format!("_blocks.{i}."));
            }
        }
        prefixes
    }

    /// The feature map at `tap`: `[N, 1280, H/32, W/32]` after the head, `[N, 320, ...]`
    /// after the last block.
    pub fn features_t(&self, x: &Tensor, train: bool, tap: LiteTap) -> Tensor {
        let stem_train = train && self.frozen_stages == 0;
        let mut y = relu6(&self.stem.0.forward(x).apply_t(&self.stem.1, stem_train));
        for (b, &stage) in self.blocks.iter().zip(&self.block_stage) {
            y = b.forward_t(&y, train && stage >= self.frozen_stages);
        }
        match tap {
            LiteTap::Head => relu6(&self.head.0.forward(&y).apply_t(&self.head.1, train)),
            LiteTap::Blocks => y,
        }
    }

    /// Embedding size at `tap`.
    pub fn dim(&self, tap: LiteTap) -> usize {
        match tap {
            LiteTap::Head => FEATURES as usize,
            LiteTap::Blocks => self
                .blocks
                .last()
                .map_or(STEM_CHANNELS, |b| b.project.0.conv.ws.size()[0])
                as usize,
        }
    }

    /// The embedding at `tap`, average-pooled.
    pub fn embed_t(&self, x: &Tensor, train: bool, tap: LiteTap) -> Tensor {
        self.features_t(x, train, tap)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
    }

    /// The embedding: the head's features, average-pooled.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.embed_t(x, train, LiteTap::Head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_extra_pixel_after() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let c = SameConv::new(vs.root() / "c", 3, 4, 3, 2, 1);
        assert_eq!(c.padding(224), (0, 1));
        assert_eq!(c.padding(225), (1, 1));
        let c5 = SameConv::new(vs.root() / "d", 3, 4, 5, 1, 1);
        assert_eq!(c5.padding(14), (2, 2));
        let out = c.forward(&Tensor::zeros(
            [1, 3, 33, 32],
            (tch::Kind::Float, tch::Device::Cpu),
        ));
        assert_eq!(out.size(), vec![1, 4, 17, 16]);
    }

    #[test]
    fn lite0_has_the_reference_shape_and_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let enc = LiteEncoder::new(vs.root() / "encoder", LiteScale::LITE0);
        assert_eq!(enc.blocks.len(), 16);
        let params: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        // 3.37 M parameters without the 1000-class classifier (4.65 M with it)
        assert!((3_300_000..3_450_000).contains(&params), "{params}");
        let x = Tensor::rand([2, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
        let e = tch::no_grad(|| enc.forward_t(&x, false));
        assert_eq!(e.size(), vec![2, FEATURES]);
        let t = tch::no_grad(|| enc.embed_t(&x, false, LiteTap::Blocks));
        assert_eq!(t.size(), vec![2, 320]);
        assert_eq!(enc.dim(LiteTap::Blocks), 320);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for n in [
            "encoder._conv_stem.weight",
            "encoder._bn0.running_var",
            "encoder._blocks.0._depthwise_conv.weight",
            "encoder._blocks.1._expand_conv.weight",
            "encoder._blocks.15._project_conv.weight",
            "encoder._conv_head.weight",
            "encoder._bn1.bias",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing");
        }
    }
}

//! SGD with momentum and weight decay, exactly PyTorch's `torch.optim.SGD` (dampening 0,
//! no Nesterov), written out so that its momentum buffers can be checkpointed: a resumed
//! run then continues bit for bit where it stopped.

use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

/// Momentum SGD over every trainable variable of a var store, each variable at the
/// learning rate times its own scale (fine-tuning moves a pretrained backbone slower than
/// a new head).
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    scales: Vec<f64>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(vs: &VarStore, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self::with_lr_scale(vs, lr, momentum, weight_decay, |_| 1.0)
    }

    /// As [`Sgd::new`], with `scale(name)` multiplying the learning rate of each variable.
    pub fn with_lr_scale(
        vs: &VarStore,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        scale: impl Fn(&str) -> f64,
    ) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = (0..params.len()).map(|_| None).collect();
        let scales = params.iter().map(|(n, _)| scale(n)).collect();
        Self {
            params,
            buffers,
            scales,
            lr,
            momentum,
            weight_decay,
        }
    }

    /// Back-propagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        tch::no_grad(|| {
            for (((_, p), buf), &scale) in self
                .params
                .iter()
                .zip(self.buffers.iter_mut())
                .zip(&self.scales)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    &g + p * self.weight_decay
                } else {
                    g.shallow_clone()
                };
                let step = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum);
                        let _ = b.g_add_(&d);
                        b.shallow_clone()
                    }
                    None => {
                        let b = d.detach().copy();
                        *buf = Some(b.shallow_clone());
                        b
                    }
                };
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(step * (self.lr * scale)));
            }
        });
    }

    /// Writes the momentum buffers (safetensors).
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let named: Vec<(&str, &Tensor)> = self
            .params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.as_str(), b)))
            .collect();
        Tensor::write_safetensors(&named, path)
    }

    /// Restores momentum buffers written by [`Sgd::save`].
    pub fn load(&mut self, path: &Path) -> Result<(), tch::TchError> {
        let device = self
            .params
            .first()
            .map(|(_, p)| p.device())
            .unwrap_or(tch::Device::Cpu);
        let saved = Tensor::read_safetensors(path)?;
        for (name, t) in saved {
            match self.params.iter().position(|(n, _)| *n == name) {
                Some(i) if t.size() == self.params[i].1.size() => {
                    self.buffers[i] = Some(t.to_device(device))
                }
                _ => {
                    return Err(tch::TchError::FileFormat(format!(
                        "{}: momentum buffer {name} does not match the model",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }
}

//! The three MTCNN networks (Zhang et al. 2016) as facenet-pytorch 2.6.0 defines them, written as
//! plain tch calls over the converted state dicts (`models/mtcnn/{pnet,rnet,onet}.safetensors`).
//!
//! Every layer is the same ATen operator facenet-pytorch's `nn.Module`s call (`conv2d`, `prelu`,
//! `max_pool2d(ceil_mode=True)`, `linear`, `softmax`), so outputs match the reference bit for bit on
//! the same device and thread count.

use std::{collections::HashMap, path::Path};

use tch::{Device, Kind, Tensor};

use super::FacesError;

/// One stage's named weights, checked for shape on load.
struct Weights {
    path: std::path::PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    fn load(path: &Path, device: Device) -> Result<Weights, FacesError> {
        let err = |message: String| FacesError::Weights { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(err("missing (run `make setup` to fetch and convert the MTCNN weights)".into()));
        }
        let tensors = Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| Ok((name, t.f_to_kind(Kind::Float)?.f_to_device(device)?)))
            .collect::<Result<HashMap<_, _>, tch::TchError>>()
            .map_err(|e| err(e.to_string()))?;
        Ok(Weights { path: path.to_path_buf(), tensors })
    }

    /// Takes tensor `name`, which must have shape `shape`.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, FacesError> {
        let t = self.tensors.remove(name).ok_or_else(|| FacesError::Weights {
            path: self.path.clone(),
            message: format!("no tensor `{name}`: not an MTCNN state dict from facenet-pytorch 2.6.0"),
        })?;
        if t.size() != shape {
            return Err(FacesError::Weights {
                path: self.path.clone(),
                message: format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size()),
            });
        }
        Ok(t)
    }

    fn conv(&mut self, name: &str, out: i64, inp: i64, k: i64) -> Result<Conv, FacesError> {
        Ok(Conv {
            weight: self.take(&format!("{name}.weight"), &[out, inp, k, k])?,
            bias: self.take(&format!("{name}.bias"), &[out])?,
        })
    }

    fn linear(&mut self, name: &str, out: i64, inp: i64) -> Result<Linear, FacesError> {
        Ok(Linear {
            weight: self.take(&format!("{name}.weight"), &[out, inp])?,
            bias: self.take(&format!("{name}.bias"), &[out])?,
        })
    }

    fn prelu(&mut self, name: &str, channels: i64) -> Result<Tensor, FacesError> {
        self.take(&format!("{name}.weight"), &[channels])
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    /// Stride 1, no padding, as every MTCNN convolution.
    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [0, 0], [1, 1], 1)
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_linear(&self.weight, Some(&self.bias))
    }
}

/// `nn.MaxPool2d(k, s, ceil_mode=True)`.
fn pool(x: &Tensor, k: i64, s: i64) -> Result<Tensor, tch::TchError> {
    x.f_max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

/// P-Net: fully convolutional, a 12×12 window per output cell (stride 2).
pub(super) struct PNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4_1: Conv,
    conv4_2: Conv,
}

impl PNet {
    pub(super) fn load(path: &Path, device: Device) -> Result<PNet, FacesError> {
        let mut w = Weights::load(path, device)?;
        Ok(PNet {
            conv1: w.conv("conv1", 10, 3, 3)?,
            prelu1: w.prelu("prelu1", 10)?,
            conv2: w.conv("conv2", 16, 10, 3)?,
            prelu2: w.prelu("prelu2", 16)?,
            conv3: w.conv("conv3", 32, 16, 3)?,
            prelu3: w.prelu("prelu3", 32)?,
            conv4_1: w.conv("conv4_1", 2, 32, 1)?,
            conv4_2: w.conv("conv4_2", 4, 32, 1)?,
        })
    }

    /// `x`: [N,3,H,W] normalized to about [-1,1], H and W ≥ 12. Returns (box regression
    /// [N,4,H',W'], face probabilities [N,2,H',W'] in [0,1], channel 1 = face), H' = (ceil(H-2)/2)-4.
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor), tch::TchError> {
        let x = self.conv1.forward(x)?.f_prelu(&self.prelu1)?;
        let x = pool(&x, 2, 2)?;
        let x = self.conv2.forward(&x)?.f_prelu(&self.prelu2)?;
        let x = self.conv3.forward(&x)?.f_prelu(&self.prelu3)?;
        let probs = self.conv4_1.forward(&x)?.f_softmax(1, Kind::Float)?;
        let reg = self.conv4_2.forward(&x)?;
        Ok((reg, probs))
    }
}

/// R-Net: refines 24×24 crops.
pub(super) struct RNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    dense4: Linear,
    prelu4: Tensor,
    dense5_1: Linear,
    dense5_2: Linear,
}

impl RNet {
    pub(super) fn load(path: &Path, device: Device) -> Result<RNet, FacesError> {
        let mut w = Weights::load(path, device)?;
        Ok(RNet {
            conv1: w.conv("conv1", 28, 3, 3)?,
            prelu1: w.prelu("prelu1", 28)?,
            conv2: w.conv("conv2", 48, 28, 3)?,
            prelu2: w.prelu("prelu2", 48)?,
            conv3: w.conv("conv3", 64, 48, 2)?,
            prelu3: w.prelu("prelu3", 64)?,
            dense4: w.linear("dense4", 128, 576)?,
            prelu4: w.prelu("prelu4", 128)?,
            dense5_1: w.linear("dense5_1", 2, 128)?,
            dense5_2: w.linear("dense5_2", 4, 128)?,
        })
    }

    /// `x`: [N,3,24,24] normalized. Returns (box regression [N,4], probabilities [N,2]).
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor), tch::TchError> {
        let x = self.conv1.forward(x)?.f_prelu(&self.prelu1)?;
        let x = pool(&x, 3, 2)?;
        let x = self.conv2.forward(&x)?.f_prelu(&self.prelu2)?;
        let x = pool(&x, 3, 2)?;
        let x = self.conv3.forward(&x)?.f_prelu(&self.prelu3)?;
        // [N,64,3,3] → [N,3,3,64] in (W,H,C) order, as the Caffe-ported dense weights expect.
        let n = x.size()[0];
        let x = x.f_permute([0, 3, 2, 1])?.f_contiguous()?.f_view([n, -1])?;
        let x = self.dense4.forward(&x)?.f_prelu(&self.prelu4)?;
        let probs = self.dense5_1.forward(&x)?.f_softmax(1, Kind::Float)?;
        let reg = self.dense5_2.forward(&x)?;
        Ok((reg, probs))
    }
}

/// O-Net: final 48×48 crops, with landmarks.
pub(super) struct ONet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4: Conv,
    prelu4: Tensor,
    dense5: Linear,
    prelu5: Tensor,
    dense6_1: Linear,
    dense6_2: Linear,
    dense6_3: Linear,
}

impl ONet {
    pub(super) fn load(path: &Path, device: Device) -> Result<ONet, FacesError> {
        let mut w = Weights::load(path, device)?;
        Ok(ONet {
            conv1: w.conv("conv1", 32, 3, 3)?,
            prelu1: w.prelu("prelu1", 32)?,
            conv2: w.conv("conv2", 64, 32, 3)?,
            prelu2: w.prelu("prelu2", 64)?,
            conv3: w.conv("conv3", 64, 64, 3)?,
            prelu3: w.prelu("prelu3", 64)?,
            conv4: w.conv("conv4", 128, 64, 2)?,
            prelu4: w.prelu("prelu4", 128)?,
            dense5: w.linear("dense5", 256, 1152)?,
            prelu5: w.prelu("prelu5", 256)?,
            dense6_1: w.linear("dense6_1", 2, 256)?,
            dense6_2: w.linear("dense6_2", 4, 256)?,
            dense6_3: w.linear("dense6_3", 10, 256)?,
        })
    }

    /// `x`: [N,3,48,48] normalized. Returns (box regression [N,4], landmarks [N,10] as five x then
    /// five y, relative to the box, probabilities [N,2]).
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
        let x = self.conv1.forward(x)?.f_prelu(&self.prelu1)?;
        let x = pool(&x, 3, 2)?;
        let x = self.conv2.forward(&x)?.f_prelu(&self.prelu2)?;
        let x = pool(&x, 3, 2)?;
        let x = self.conv3.forward(&x)?.f_prelu(&self.prelu3)?;
        let x = pool(&x, 2, 2)?;
        let x = self.conv4.forward(&x)?.f_prelu(&self.prelu4)?;
        // [N,128,3,3] → (W,H,C) order, as in R-Net.
        let n = x.size()[0];
        let x = x.f_permute([0, 3, 2, 1])?.f_contiguous()?.f_view([n, -1])?;
        let x = self.dense5.forward(&x)?.f_prelu(&self.prelu5)?;
        let probs = self.dense6_1.forward(&x)?.f_softmax(1, Kind::Float)?;
        let reg = self.dense6_2.forward(&x)?;
        let landmarks = self.dense6_3.forward(&x)?;
        Ok((reg, landmarks, probs))
    }
}

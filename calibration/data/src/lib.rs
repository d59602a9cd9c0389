//! # oodmon-data
//!
//! Image data sets for training and calibration (CIFAR binaries, IDX, image folders), read
//! through the shared preprocessing, and embedded through the runtime exactly as a camera
//! frame is on the edge.
//!
//! - [`datasets`]: [`DataSpec`] (`cifar10:DIR`, `idx:DIR`, `folder:DIR`, ...), loading and
//!   visiting images.
//! - [`embed`]: a split's images as encoder inputs, or embedded through an encoder.

pub mod datasets;
pub mod embed;

pub use datasets::{DataError, DataSpec, Dataset, Split};
pub use embed::{
    dataset_inputs, embed_dataset, embed_dataset_with_quality, embed_loaded, for_each_input,
    image_quality, image_quality_loaded, Embedded,
};

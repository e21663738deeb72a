//! # masked-softmax
//!
//! Length-masked attention softmax. Scores `x` of shape `[batch, heads, q_len, k_len]`
//! come with per-batch sequence lengths; the pads get weight exactly `0.0` and the valid
//! positions of each row form a probability distribution:
//!
//! ```text
//! lengths 4, 1, 6, 3          y = masked_softmax(x)
//! x: 3.8 4.4 3.0 3.6 [pad pad]  -> 0.2445 0.4455 0.1099 0.2002 0      0
//!    3.4 [pad ...............]  -> 1      0      0      0      0      0
//!    3.4 4.8 3.0 4.4 3.8 4.2    -> 0.0822 0.3335 0.0551 0.2235 0.1227 0.1830
//!    3.2 3.4 4.6 [pad pad pad]  -> 0.1593 0.1946 0.6461 0      0      0
//! ```
//!
//! On the GPU one CUDA kernel builds the mask from the lengths, never reads the padded
//! scores and writes the whole output in one launch ([`cuda::CudaSoftmax`]). On the CPU,
//! [`reference`](mod@reference) computes the same contract in f64; [`compare`] checks any result against
//! it.
//!
//! The contract: right or left padding ([`Padding`]), optional query lengths
//! ([`Lengths`]), causal masking aligned bottom-right with an optional sliding window
//! ([`Causal`]), a scale, f32/f16/bf16 storage with f32 arithmetic ([`DType`]). A row with
//! no valid position (or only `-inf` scores) is all zeros, never NaN; NaN or `+inf` in a
//! valid position propagate as IEEE arithmetic says; whatever the pads hold cannot change
//! the output.
//!
//! ```
//! use masked_softmax::{reference, Lengths, Shape, Spec};
//! let spec = Spec::new(Shape::matrix(2, 3));
//! let x = [1.0f32, 1.0, f32::NAN, 5.0, 2.0, 2.0];
//! let mut y = [0.0f32; 6];
//! reference::forward(&spec, Lengths::keys(&[2, 0]), &x, &mut y)?;
//! assert_eq!(y, [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
//! # Ok::<(), masked_softmax::Error>(())
//! ```
#![deny(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod compare;
pub mod contract;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod mask;
pub mod plan;
pub mod reference;
pub mod seed;

pub use contract::{Causal, Lengths, Padding, Shape, Spec};
pub use dtype::{DType, Element, Real};
pub use error::{Error, LengthKind, Result};
pub use half::{bf16, f16};

/// Compiles the README's examples as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

//! Tensor types. Every activation is float32 NCHW with a symbolic batch dimension `N`; the model
//! fixes channels, height and width. A vector (the classifier output) is `[N, C, 1, 1]`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
}

impl TensorType {
    pub fn new(channels: u32, height: u32, width: u32) -> TensorType {
        TensorType {
            channels,
            height,
            width,
        }
    }

    /// Elements per image (batch 1).
    pub fn elements(&self) -> u64 {
        u64::from(self.channels) * u64::from(self.height) * u64::from(self.width)
    }

    /// Bytes per image (float32).
    pub fn bytes(&self) -> u64 {
        self.elements() * 4
    }

    pub fn spatial(&self) -> u64 {
        u64::from(self.height) * u64::from(self.width)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[N,{},{},{}]", self.channels, self.height, self.width)
    }
}

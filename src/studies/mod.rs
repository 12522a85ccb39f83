//! Studies of the engine's operators that are not part of a training pass.

pub mod fov;

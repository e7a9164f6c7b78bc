//! The differentiable 3D scene FSD optimises: cameras and rays, the hash-grid
//! field with its MLPs, volume rendering forward and backward, shading,
//! regularisers and the optimiser. Uses `ops`, never `models`.

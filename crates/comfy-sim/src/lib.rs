//! comfy-sim

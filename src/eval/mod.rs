//! Evaluation of finished runs (FSD_SPEC §6): prompt fidelity, Inception
//! Score and Cross-FID on the embedded prior's classifier.

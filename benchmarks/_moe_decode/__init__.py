"""The parts of `benchmarks/moe_decode.py`, each about one thing: decoding modes (`modes`),
paired statistics (`stats`), expert masks (`masks`), the AR source and the cognitive tiers
beside the model (`source`), the served-settings sweep on the dev split (`sweep`) and the
half mask's re-run (`half_rerun`)."""

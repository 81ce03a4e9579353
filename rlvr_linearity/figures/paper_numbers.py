"""The papers' headline numbers (docs/methods.md §E), used as reference columns and overlays.

Accuracies are fractions in [0, 1]. Values marked "read off the plot" in docs/methods.md are
approximate and only drawn as reference, never compared exactly.
"""

from __future__ import annotations

# LIN Table 1: output-space (logits) extrapolation. benchmark -> (Std. RL, Ours, reported rel. %).
LIN_TABLE1 = {
    "AIME24 avg@64": (0.4193, 0.4458, 6.3),
    "AIME25 avg@64": (0.3135, 0.3333, 6.3),
    "MATH500 avg@64": (0.8803, 0.8900, 1.1),
    "LCB avg@4": (0.1786, 0.1976, 10.6),
}
# The table's Average row and its "+4.2%" (relative change of the averaged score); the mean of
# the per-benchmark relative changes would be 6.1%.
LIN_TABLE1_AVERAGE = (0.4479, 0.4667, 4.2)
LIN_TABLE1_MEAN_OF_RELATIVE = 6.1

# LIN Table 2: fixed real-step budgets. real steps -> {benchmark: (Std RL, Ours)}, plus the
# reported %Imp (mean of the per-benchmark relative improvements).
LIN_TABLE2 = {
    200: {"AIME24": (0.3172, 0.3318), "AIME25": (0.2536, 0.2979), "MATH500": (0.8421, 0.8611), "LCB": (0.2714, 0.2619)},
    400: {"AIME24": (0.3391, 0.3672), "AIME25": (0.2682, 0.3005), "MATH500": (0.8525, 0.8658), "LCB": (0.2810, 0.2905)},
    800: {"AIME24": (0.3490, 0.3984), "AIME25": (0.2932, 0.3094), "MATH500": (0.8664, 0.8667), "LCB": (0.2821, 0.2905)},
    1200: {"AIME24": (0.3828, 0.4120), "AIME25": (0.2995, 0.3120), "MATH500": (0.8658, 0.8731), "LCB": (0.2857, 0.2762)},
}
LIN_TABLE2_AVG = {200: (0.4211, 0.4382), 400: (0.4352, 0.4560), 800: (0.4477, 0.4663), 1200: (0.4585, 0.4683)}
LIN_TABLE2_IMP = {200: 5.2, 400: 6.3, 800: 5.7, 1200: 2.3}

# LIN Fig. 6: real RL steps to reach each AIME24 threshold (None: never reached).
LIN_FIG6_THRESHOLDS = (0.35, 0.38, 0.40)
LIN_FIG6_STEPS = {
    "Std RL": {0.35: 500, 0.38: 1100, 0.40: 1400},
    "(100,100)": {0.35: 300, 0.38: 700, 0.40: 900},
    "(300,300)": {0.35: 300, 0.38: 700, 0.40: 1100},
    "(300,600)": {0.35: 300, 0.38: 600, 0.40: None},
    "(20,100)": {0.35: 100, 0.38: 180, 0.40: None},
}

# LIN Fig. 5: weight extrapolation, t0 = 0, AIME24 avg@64 (read off the plot). t1 -> {t': acc}.
LIN_FIG5 = {
    300: {400: 0.324, 600: 0.353, 900: 0.357, 1200: 0.344},
    600: {800: 0.365, 1000: 0.371, 1100: 0.373, 1200: 0.363},
    1400: {1600: 0.395, 1700: 0.406, 1800: 0.415, 1900: 0.409},
}

# LIN linearity statistics: README claim and Fig. 2 (v3) approximate medians (weights, outputs).
LIN_FRAC_WEIGHTS_ABOVE_07 = 0.70  # "over 70% of weights achieve R² > 0.7"
LIN_ROBUSTNESS_MEDIANS = {"RL": (0.85, 0.83), "SFT": (0.43, 0.34), "Zero-RL": (0.87, 0.83)}
LIN_TOKEN_EXAMPLES = {"wait": 0.950, "but": 0.820, "earlier": 0.930, "alternatively": 0.850}

# RELEX (abstract and README): observe 15% of the steps (T_cut 75 of 500) and match full RLVR.
RELEX_SETTINGS = {
    "Qwen2.5-Math-1.5B": {"t_cut": 75, "target": 500},
    "Qwen3-4B-Base": {"t_cut": 75, "target": 500},
    "Qwen3-8B-Base": {"t_cut": 100, "target": 750},
}

# LIN Fig. 3 (token SNR): weight R² of SFT (median, mean) and the peak weighted median with
# reward-style noise, at its SNR in dB.
LIN_FIG3_SFT = (0.43, 0.44)
LIN_FIG3_PEAK = (-10.0, 0.582)

"""The semantic reuse decision, in four small parts: analysis (a prompt read once),
lexicon (generic scale words, a data file), conflicts (reasons to refuse), features and
model (a learned probability over what differs between two prompts), and the judge that
puts them in order."""

from appliance.cache.reuse.judge import DEFAULT_THRESHOLDS, ReuseDecision, ReuseJudge, ReuseThresholds

__all__ = ["DEFAULT_THRESHOLDS", "ReuseDecision", "ReuseJudge", "ReuseThresholds"]

"""What happens to a coder's output before anyone sees it: ICD coding edits (:mod:`.engine`) and
ICD-9 <-> ICD-10 translation through the GEMs (:mod:`.versions`). Both record every change on the
prediction as a :class:`~icdcoder.prediction.RuleEdit`."""

from icdcoder.rules.engine import RULES, RuleConfig, RuleEngine, Violation, apply_rules, edit_counts, read_codes_file

__all__ = ["RULES", "RuleConfig", "RuleEngine", "Violation", "apply_rules", "edit_counts", "read_codes_file"]

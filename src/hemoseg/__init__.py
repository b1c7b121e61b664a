"""hemoseg: find and measure intracranial hemorrhage on head CT.

Research software. hemoseg is NOT a cleared medical device and must not be
used for diagnosis or treatment decisions.
"""

__version__ = "0.1.0"

RESEARCH_NOTICE = (
    "Research use only. hemoseg is not a cleared medical device; "
    "its output must not be used for diagnosis or treatment."
)

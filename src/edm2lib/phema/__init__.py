"""Power-function EMA (EDM2 Sec. 3): the profile math, online tracking, post-hoc reconstruction, plots."""

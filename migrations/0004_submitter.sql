-- Access (issue 9.10): the uid of the user who submitted each pipeline, from the caller's
-- SO_PEERCRED. NULL: stored before submitters were recorded, or by `arroyod run`: the daemon's
-- own user. A pipeline of anyone but root or the daemon's user runs confined.
ALTER TABLE pipelines ADD COLUMN submitter_uid INTEGER;

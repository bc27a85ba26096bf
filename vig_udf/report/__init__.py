"""Reports: ``vig check`` (:mod:`.check_report`), ``vig report`` of a scores table (:mod:`.scores_report`), and
the views they and the demo share (:mod:`.views`)."""

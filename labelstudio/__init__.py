"""The Label Studio protocol, shared by the backend, the correction loop and pre-labelling.

Nothing here serves HTTP or touches Redis: image references and guarded fetching
(:mod:`~labelstudio.references`, :mod:`~labelstudio.guarded_http`, :mod:`~labelstudio.auth`,
:mod:`~labelstudio.fetch`, settings in :mod:`~labelstudio.settings`), the label config
(:mod:`~labelstudio.label_config`), one result converter per control
(:mod:`~labelstudio.controls`), predictions as Label Studio wants them
(:mod:`~labelstudio.predictions`), annotations back to masks (:mod:`~labelstudio.rasterise`)
and project ids (:mod:`~labelstudio.projects`). It sits on ``clipsam`` and nothing else of ours.
"""

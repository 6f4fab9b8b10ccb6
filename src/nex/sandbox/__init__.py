"""Sandboxes through an OCI runtime (runc, crun): bundles, the runtime driver, cgroup readings.

Interface other runtimes build on (stable; changes are written here first):

- :class:`nex.sandbox.bundle.ContainerSpec` and
  ``nex.sandbox.bundle.write_bundle(spec, bundle_dir) -> Path`` (config.json; the
  rootfs must exist; the mount points /proc, /dev, /tmp are created in it).
  ``ContainerSpec.mounts`` takes :class:`nex.sandbox.bundle.BindMount` values
  (read-only by default).
- :class:`nex.sandbox.runner.OciRunner`: ``await OciRunner.detect(state_dir, guard=None)``
  (``OciRunner.probe`` also says why nothing works), ``await start(spec, bundle_dir, logs)
  -> dict`` (handle data: container_id, runtime, root, pid, cgroups_path, bundle),
  ``await wait(container_id) -> ExitResult``, ``await stop(container_id, grace)``,
  ``usage(container_id) -> Usage``, ``await cleanup(container_id)``; for the node's
  start-up sweep ``await list_containers()`` and ``await sweep()``.
  Addition: ``runner.bundles_dir`` is where bundles must go (every directory above
  a bundle must be searchable by the user namespace's unprivileged root: use
  ``make_bundle_dir(runner.bundles_dir / name, id_base)``, which only that root and
  the node can enter, and ``remove_bundle`` to remove one).
- :mod:`nex.sandbox.idranges`: a host uid range per container (``host_ranges().allocate``,
  ``ContainerSpec.id_base``); :mod:`nex.sandbox.idmap`: idmapped read-only mounts
  (an image's tree as a container's rootfs).
- The node detects once and hands the runner to runtimes as ``RuntimeContext.oci``
  (None when the node runs unsandboxed).
"""

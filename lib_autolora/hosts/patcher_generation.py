"""What the generations of the two patcher-based families (Forge, ldm_patched) share: which denoiser
calls are theirs, and the patchers' model options that hold their hooks, emptied of them at the end
(a host may keep a hooked patcher after the generation: Forge keeps the last loaded one)."""
import lib_autolora.hosts.patcher_hooks as patcher_hooks
from lib_autolora.hosts.common import CommonGeneration


class PatcherGeneration(CommonGeneration):
    def __init__(self, p, params, opts):
        super().__init__(p, params, opts)
        self.step_base_conds = None
        self.host_scale = None
        self.hooked = []  # the model options that hold our hooks

    def handles(self, denoiser):
        return self.switch is not None and self.pass_params is not None and getattr(denoiser, "p", None) is self.p

    def hooked_already(self, options):
        """Whether `options` hold our hooks already (a clone of a patcher we hooked: hires fix); they are
        emptied at the end as well."""
        if not patcher_hooks.installed(options):
            return False
        self.hooked.append(options)
        return True

    def hook(self, options):
        patcher_hooks.install(options, self)
        self.hooked.append(options)

    def close(self):
        super().close()
        for options in self.hooked:
            patcher_hooks.uninstall(options)
        self.hooked.clear()
        self.step_base_conds = None

using DirBackup.Errors;
using DirBackup.Rpc;

namespace DirBackup.Api;

/// <summary>The image, snapshot and migration methods of the storage API: a backup-only storage refuses or ignores them.</summary>
public sealed partial class StorageApi
{
    [RpcMethod("activate_volume")]
    private Task<object?> ActivateVolume(RpcArgs args, CallContext context) => IgnoreForBackup(args);

    [RpcMethod("deactivate_volume")]
    private Task<object?> DeactivateVolume(RpcArgs args, CallContext context) => IgnoreForBackup(args);

    [RpcMethod("map_volume")]
    private Task<object?> MapVolume(RpcArgs args, CallContext context) => IgnoreForBackup(args);

    [RpcMethod("unmap_volume")]
    private Task<object?> UnmapVolume(RpcArgs args, CallContext context) => IgnoreForBackup(args);

    [RpcMethod("alloc_image")]
    private Task<object?> AllocImage(RpcArgs args, CallContext context) => Refuse(args, "allocating disk images");

    [RpcMethod("clone_image")]
    private Task<object?> CloneImage(RpcArgs args, CallContext context) => Refuse(args, "cloning images");

    [RpcMethod("create_base")]
    private Task<object?> CreateBase(RpcArgs args, CallContext context) => Refuse(args, "templates");

    [RpcMethod("volume_resize")]
    private Task<object?> VolumeResize(RpcArgs args, CallContext context) => Refuse(args, "resizing volumes");

    [RpcMethod("volume_snapshot")]
    private Task<object?> VolumeSnapshot(RpcArgs args, CallContext context) => Refuse(args, "snapshots");

    [RpcMethod("volume_snapshot_rollback")]
    private Task<object?> VolumeSnapshotRollback(RpcArgs args, CallContext context) => Refuse(args, "snapshots");

    [RpcMethod("volume_snapshot_delete")]
    private Task<object?> VolumeSnapshotDelete(RpcArgs args, CallContext context) => Refuse(args, "snapshots");

    [RpcMethod("rename_volume")]
    private Task<object?> RenameVolume(RpcArgs args, CallContext context) => Refuse(args, "renaming volumes");

    [RpcMethod("rename_snapshot")]
    private Task<object?> RenameSnapshot(RpcArgs args, CallContext context) => Refuse(args, "snapshots");

    [RpcMethod("volume_export")]
    private Task<object?> VolumeExport(RpcArgs args, CallContext context) => Refuse(args, "volume export (storage migration)");

    [RpcMethod("volume_import")]
    private Task<object?> VolumeImport(RpcArgs args, CallContext context) => Refuse(args, "volume import (storage migration)");

    [RpcMethod("volume_export_formats")]
    private Task<object?> VolumeExportFormats(RpcArgs args, CallContext context) => NoFormats(args);

    [RpcMethod("volume_import_formats")]
    private Task<object?> VolumeImportFormats(RpcArgs args, CallContext context) => NoFormats(args);

    [RpcMethod("volume_has_feature")]
    private Task<object?> VolumeHasFeature(RpcArgs args, CallContext context)
    {
        Open(args);
        return Done(false);
    }

    [RpcMethod("on_add_hook")]
    private Task<object?> OnAddHook(RpcArgs args, CallContext context) => CheckConfig(args);

    /// <summary>With api() &lt; 13 PVE passes only the changed options here, never the fixed path.</summary>
    [RpcMethod("on_update_hook")]
    private Task<object?> OnUpdateHook(RpcArgs args, CallContext context) =>
        args.Element("scfg").TryGetProperty("path", out _) ? CheckConfig(args) : Done();

    [RpcMethod("on_update_hook_full")]
    private Task<object?> OnUpdateHookFull(RpcArgs args, CallContext context) => CheckConfig(args);

    [RpcMethod("on_delete_hook")]
    private Task<object?> OnDeleteHook(RpcArgs args, CallContext context) => Done();

    /// <summary>The storage keeps no secrets and no copy of its configuration; a hook only checks the path is usable as one.</summary>
    private Task<object?> CheckConfig(RpcArgs args)
    {
        Open(args);
        return Done();
    }

    private Task<object?> IgnoreForBackup(RpcArgs args)
    {
        Open(args);
        args.Volume();
        RefuseSnapshot(args, "snapname");
        return Done();
    }

    private Task<object?> NoFormats(RpcArgs args)
    {
        Open(args);
        return Done(Array.Empty<string>());
    }

    private Task<object?> Refuse(RpcArgs args, string what)
    {
        var storeId = Open(args).Config.StoreId;
        throw new DirBackupException(ErrorCode.NotSupported, $"storage '{storeId}' holds backups only: {what} not supported ({args.Method})");
    }
}

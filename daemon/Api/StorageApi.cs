using DirBackup.Errors;
using DirBackup.Rpc;
using DirBackup.Store;

namespace DirBackup.Api;

/// <summary>
/// The storage-plugin methods PVE calls on a backup storage (PVE-API.md 2.4), over <see cref="BackupStore"/>.
/// Image, snapshot and migration methods are refused or ignored as a backup-only storage must.
/// </summary>
public sealed partial class StorageApi(StoreSettings settings)
{
    private BackupStore Open(RpcArgs args) => new(args.Storage(), settings);

    private static Task<object?> Done(object? value = null) => Task.FromResult(value);

    [RpcMethod("check_connection")]
    private Task<object?> CheckConnection(RpcArgs args, CallContext context)
    {
        // Reaching the daemon is the connection; a missing path is activate_storage's error to report.
        Open(args);
        return Done(true);
    }

    [RpcMethod("activate_storage")]
    private async Task<object?> ActivateStorage(RpcArgs args, CallContext context)
    {
        await Open(args).EnsureAvailableAsync(context.CancellationToken).ConfigureAwait(false);
        return null;
    }

    [RpcMethod("deactivate_storage")]
    private Task<object?> DeactivateStorage(RpcArgs args, CallContext context)
    {
        Open(args);
        return Done();
    }

    [RpcMethod("status")]
    private async Task<object?> Status(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        StorageStatus status;
        try
        {
            status = await store.StatusAsync(context.CancellationToken).ConfigureAwait(false);
        }
        catch (DirBackupException e) when (e.Code == ErrorCode.StorageUnavailable)
        {
            // pvestatd asks every few seconds: an unmounted backup disk is "inactive", not an error to log each time.
            status = new StorageStatus(0, 0, 0, false);
        }
        return new Dictionary<string, object>
        {
            ["total"] = status.Total,
            ["avail"] = status.Avail,
            ["used"] = status.Used,
            ["active"] = status.Active,
        };
    }

    [RpcMethod("parse_volname")]
    private Task<object?> ParseVolname(RpcArgs args, CallContext context)
    {
        var volume = args.Volume();
        return Done(new Dictionary<string, object>
        {
            ["vtype"] = "backup",
            ["name"] = volume.ArchiveName,
            ["vmid"] = volume.VmId,
            ["format"] = BackupStore.VolumeFormat,
        });
    }

    [RpcMethod("path")]
    private Task<object?> PathOf(RpcArgs args, CallContext context) => Done(PathResult(args));

    [RpcMethod("filesystem_path")]
    private Task<object?> FilesystemPath(RpcArgs args, CallContext context) => Done(PathResult(args));

    private Dictionary<string, object> PathResult(RpcArgs args)
    {
        var store = Open(args);
        var volume = args.Volume();
        RefuseSnapshot(args, "snapname");
        return new Dictionary<string, object>
        {
            ["path"] = store.BackupDir(volume),
            ["vmid"] = volume.VmId,
            ["vtype"] = "backup",
        };
    }

    [RpcMethod("list_images")]
    private Task<object?> ListImages(RpcArgs args, CallContext context)
    {
        Open(args);
        return Done(Array.Empty<object>());
    }

    [RpcMethod("list_volumes")]
    private async Task<object?> ListVolumes(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.OptionalVmId();
        var types = args.StringList("content-types");
        if (types is not null && !types.Contains("backup"))
        {
            return Array.Empty<VolumeInfo>();
        }
        var warnings = new List<string>();
        var entries = store.ListBackups(vmid, warnings.Add);
        foreach (var warning in warnings)
        {
            await context.WarnAsync(warning).ConfigureAwait(false);
        }
        return entries.ConvertAll(store.ToVolumeInfo);
    }

    [RpcMethod("volume_size_info")]
    private Task<object?> VolumeSizeInfo(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = args.Volume();
        var info = store.ToVolumeInfo(new BackupEntry(volume, store.ReadManifest(volume)));
        return Done(new Dictionary<string, object?>
        {
            ["size"] = info.Size,
            ["format"] = info.Format,
            ["used"] = info.Size,
            ["parent"] = info.Parent,
            ["ctime"] = info.CTime,
        });
    }

    [RpcMethod("get_volume_attribute")]
    private Task<object?> GetVolumeAttribute(RpcArgs args, CallContext context) =>
        Done(Open(args).GetAttribute(args.Volume(), args.String("attribute")));

    [RpcMethod("update_volume_attribute")]
    private async Task<object?> UpdateVolumeAttribute(RpcArgs args, CallContext context)
    {
        await Open(args).UpdateAttributeAsync(args.Volume(), args.String("attribute"), args.Element("value"), context.CancellationToken).ConfigureAwait(false);
        return null;
    }

    [RpcMethod("free_image")]
    private async Task<object?> FreeImage(RpcArgs args, CallContext context)
    {
        await Open(args).DeleteAsync(args.Volume(), context.CancellationToken).ConfigureAwait(false);
        return null;
    }

    [RpcMethod("prune_backups")]
    private async Task<object?> PruneBackups(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        await store.EnsureAvailableAsync(context.CancellationToken).ConfigureAwait(false);
        var keep = new Dictionary<string, long>(StringComparer.Ordinal);
        var keepElement = args.Element("keep");
        if (keepElement.ValueKind == System.Text.Json.JsonValueKind.Object)
        {
            foreach (var option in keepElement.EnumerateObject())
            {
                keep[option.Name] = option.Value.ValueKind switch
                {
                    System.Text.Json.JsonValueKind.True => 1,
                    System.Text.Json.JsonValueKind.False => 0,
                    System.Text.Json.JsonValueKind.Number when option.Value.TryGetInt64(out long n) && n >= 0 => n,
                    System.Text.Json.JsonValueKind.String when long.TryParse(option.Value.GetString(), out long n) && n >= 0 => n,
                    _ => throw DirBackupException.InvalidParams($"prune_backups: keep option '{option.Name}' must be a number of backups"),
                };
            }
        }
        GuestType? type = args.OptionalString("type") switch
        {
            null => null,
            var t when GuestTypes.TryParse(t, out var parsed) => parsed,
            var t => throw DirBackupException.InvalidParams($"prune_backups: unknown type '{t}' (qemu or lxc)"),
        };
        var entries = await store.PruneAsync(keep, args.OptionalVmId(), type, args.Boolean("dryrun"), context.LogAsync, context.CancellationToken).ConfigureAwait(false);
        return entries.Select(e => new Dictionary<string, object>
        {
            ["volid"] = e.Volume.VolId(store.Config.StoreId),
            ["ctime"] = e.CTime,
            ["type"] = e.Volume.Type.Name(),
            ["vmid"] = e.Volume.VmId,
            ["mark"] = e.Mark ?? "keep",
        }).ToList();
    }

    private static void RefuseSnapshot(RpcArgs args, string parameter)
    {
        if (args.Has(parameter))
        {
            throw new DirBackupException(ErrorCode.NotSupported, $"{args.Method}: backups on a dirbackup storage have no snapshots");
        }
    }
}

using System.Text.Json;
using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Restore;
using DirBackup.Rpc;
using DirBackup.Store;

namespace DirBackup.Api;

/// <summary>
/// The backup-provider methods (PVE-API.md 3.2): backups, restores and what a committed backup holds.
/// </summary>
public sealed class ProviderApi(StoreSettings settings, BackupSettings backupSettings, BackupSessions sessions, RestoreSessions restores)
{
    private readonly VmBackup vmBackup = new(backupSettings);
    private readonly ContainerBackup containerBackup = new(backupSettings);

    private BackupStore Open(RpcArgs args) => new(args.Storage(), settings);

    [RpcMethod("restore_get_mechanism")]
    private Task<object?> RestoreGetMechanism(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = args.Volume();
        var manifest = store.ReadManifest(volume);
        string mechanism = volume.Type switch
        {
            GuestType.Qemu => "qemu-img",
            _ when manifest.Archive == "archive.tar" => "tar",
            _ when manifest.Archive == "archive.sqfs" => "directory",
            _ => throw DirBackupException.Io($"backup '{volume}' records no container archive"),
        };
        return Task.FromResult<object?>(new Dictionary<string, string> { ["mechanism"] = mechanism, ["vmtype"] = volume.Type.Name() });
    }

    [RpcMethod("archive_get_guest_config")]
    private Task<object?> ArchiveGetGuestConfig(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = args.Volume();
        var manifest = store.ReadManifest(volume);
        var bytes = store.ReadBackupFile(volume, manifest.GuestConfig)
            ?? throw DirBackupException.Io($"backup '{volume}' holds no guest configuration");
        return Task.FromResult<object?>(Convert.ToBase64String(bytes));
    }

    [RpcMethod("archive_get_firewall_config")]
    private Task<object?> ArchiveGetFirewallConfig(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = args.Volume();
        var bytes = store.ReadBackupFile(volume, store.ReadManifest(volume).FirewallConfig);
        return Task.FromResult<object?>(bytes is null ? null : Convert.ToBase64String(bytes));
    }

    [RpcMethod("job_init")]
    private async Task<object?> JobInit(RpcArgs args, CallContext context)
    {
        args.Integer("start-time");
        await Open(args).EnsureAvailableAsync(context.CancellationToken).ConfigureAwait(false);
        return null;
    }

    [RpcMethod("job_cleanup")]
    private Task<object?> JobCleanup(RpcArgs args, CallContext context)
    {
        sessions.EndAll(Open(args).Root, context.Connection);
        return Task.FromResult<object?>(null);
    }

    [RpcMethod("backup_init")]
    private async Task<object?> BackupInit(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.VmId();
        var type = GuestTypeOf(args.String("vmtype"));
        long start = args.Integer("start-time");
        if (start < 0)
        {
            throw DirBackupException.InvalidParams($"backup_init: start-time {start} is not a Unix time");
        }
        await store.EnsureAvailableAsync(context.CancellationToken).ConfigureAwait(false);
        var session = await sessions.StartAsync(store, new VolumeName(vmid, type, start), context.Connection, context.Connection.Closed).ConfigureAwait(false);
        return new Dictionary<string, string> { ["archive-name"] = session.Volume.ArchiveName };
    }

    [RpcMethod("backup_get_mechanism")]
    private Task<object?> BackupGetMechanism(RpcArgs args, CallContext context)
    {
        Open(args);
        args.VmId();
        return Task.FromResult<object?>(GuestTypeOf(args.String("vmtype")) == GuestType.Qemu ? "nbd" : "directory");
    }

    [RpcMethod("backup_vm_query_incremental")]
    private Task<object?> BackupVmQueryIncremental(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.VmId();
        var volumes = args.Element("volumes");
        var session = sessions.Find(store, vmid);
        if (session is { Running: false, Committed: false } && session.Volume.Type == GuestType.Qemu)
        {
            session.WhyFull.Clear();
        }
        else
        {
            session = null;
        }
        bool full = VmMode(args) == "full";
        var record = full ? null : IncrementalRecord.Read(store, vmid);
        // Every name is checked before any target starts: a refused query leaves nothing running.
        var devices = volumes.EnumerateObject().Select(d => (Name: VmBackup.CheckDeviceName(d.Name),
            Size: d.Value.ValueKind == JsonValueKind.Object && d.Value.TryGetProperty("size", out var s) && VmBackup.PositiveInteger(s) is long n ? n : -1)).ToList();
        var answer = new Dictionary<string, string>();
        foreach (var (name, size) in devices)
        {
            var (parent, whyFull) = record?.Choose(store, vmid, name, size) is { } choice
                ? (choice.Parent, choice.WhyFull)
                : (null, "the storage takes full backups only (dirbackup-vm-mode full)");
            answer[name] = parent is null ? "new" : "use";
            if (whyFull is not null)
            {
                session?.WhyFull.TryAdd(name, whyFull);
            }
            if (session is not null && size > 0)
            {
                session.StartTarget(name, size, parent, backupSettings.RuntimeDir, context.Logger, context.Connection.Closed);
            }
        }
        return Task.FromResult<object?>(full ? null : answer);
    }

    [RpcMethod("backup_vm")]
    private async Task<object?> BackupVm(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.VmId();
        var session = sessions.Find(store, vmid)
            ?? throw DirBackupException.InvalidParams($"backup_vm for guest {vmid} without backup_init on storage '{store.Config.StoreId}'");
        if (session.Volume.Type != GuestType.Qemu || session.Committed || session.Running)
        {
            throw DirBackupException.InvalidParams($"backup_vm: the backup '{session.Volume}' started by backup_init is not a VM backup waiting for its data");
        }
        await RunDataCallAsync(session, () => vmBackup.RunAsync(session, args, context), context).ConfigureAwait(false);
        return null;
    }

    /// <summary>
    /// backup_vm and backup_container: the session is busy meanwhile, and a vzdump that went away while the data was
    /// copied (its connection closed) abandons the backup.
    /// </summary>
    private async Task RunDataCallAsync(GuestBackup session, Func<Task> run, CallContext context)
    {
        session.Running = true;
        try
        {
            await run().ConfigureAwait(false);
        }
        finally
        {
            session.Running = false;
            if (context.Connection.Closed.IsCancellationRequested)
            {
                sessions.End(session);
            }
        }
    }

    [RpcMethod("backup_cleanup")]
    private Task<object?> BackupCleanup(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.OptionalVmId();
        var session = vmid is int id ? sessions.FindAny(store, id) : null;
        bool success = args.Boolean("success");
        if (session is null)
        {
            if (success)
            {
                throw DirBackupException.InvalidParams($"backup_cleanup: no backup of guest {vmid} is in progress on storage '{store.Config.StoreId}'");
            }
            return Task.FromResult<object?>(Stats(0));
        }
        if (!session.Committed)
        {
            session.Finish();
            if (success)
            {
                throw DirBackupException.InvalidParams($"backup_cleanup: backup '{session.Volume}' has no data; backup_vm did not complete");
            }
            return Task.FromResult<object?>(Stats(0));
        }
        // Committed: it stays even when vzdump reports a later failure, since QEMU has already moved its bitmap on.
        var size = store.ReadManifest(session.Volume).Size;
        session.Finish();
        return Task.FromResult<object?>(Stats(size));
    }

    [RpcMethod("backup_handle_log_file")]
    private async Task<object?> BackupHandleLogFile(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var vmid = args.VmId();
        var file = args.String("filename");
        var session = sessions.FindAny(store, vmid);
        if (session is null || !session.Committed)
        {
            if (session is not null)
            {
                sessions.End(session);
            }
            return null;
        }
        try
        {
            await LogFile.KeepAsync(file, session, backupSettings.MaxLogFileBytes, context.CancellationToken).ConfigureAwait(false);
        }
        catch (DirBackupException e)
        {
            await context.WarnAsync($"the task log was not stored with the backup: {e.Message}").ConfigureAwait(false);
        }
        finally
        {
            sessions.End(session);
        }
        return null;
    }

    private static Dictionary<string, object> Stats(long archiveSize) =>
        new() { ["stats"] = new Dictionary<string, long> { ["archive-size"] = archiveSize } };

    private static GuestType GuestTypeOf(string vmtype) =>
        GuestTypes.TryParse(vmtype, out var type) ? type : throw DirBackupException.InvalidParams($"unknown guest type '{vmtype}' (qemu or lxc)");

    /// <summary>Storage option dirbackup-vm-mode: incremental (default) or full (every backup reads the whole disk).</summary>
    private static string VmMode(RpcArgs args)
    {
        var scfg = args.Element("scfg");
        var mode = scfg.TryGetProperty("dirbackup-vm-mode", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : "incremental";
        return mode is "incremental" or "full" ? mode : throw DirBackupException.InvalidParams($"dirbackup-vm-mode '{mode}' is neither incremental nor full");
    }

    /// <summary>Still root, in the vzdump process: the connection the unprivileged child will borrow is this one.</summary>
    [RpcMethod("backup_container_prepare")]
    private Task<object?> BackupContainerPrepare(RpcArgs args, CallContext context)
    {
        var session = ContainerSession(args);
        session.PreparedBy = context.Peer.Pid;
        return Task.FromResult<object?>(null);
    }

    [RpcMethod("backup_container")]
    private async Task<object?> BackupContainer(RpcArgs args, CallContext context)
    {
        var session = ContainerSession(args);
        await RunDataCallAsync(session, () => containerBackup.RunAsync(session, args, context), context).ConfigureAwait(false);
        return null;
    }

    private GuestBackup ContainerSession(RpcArgs args)
    {
        var store = Open(args);
        var vmid = args.VmId();
        var session = sessions.Find(store, vmid)
            ?? throw DirBackupException.InvalidParams($"{args.Method} for guest {vmid} without backup_init on storage '{store.Config.StoreId}'");
        if (session.Volume.Type != GuestType.Lxc || session.Committed || session.Running)
        {
            throw DirBackupException.InvalidParams($"{args.Method}: the backup '{session.Volume}' started by backup_init is not a container backup waiting for its data");
        }
        return session;
    }
    [RpcMethod("restore_vm_init")]
    private Task<object?> RestoreVmInit(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = VmVolume(args);
        var manifest = store.ReadManifest(volume);
        restores.Begin(store, volume, context.Peer.Pid);
        return Task.FromResult<object?>(manifest.Devices.ToDictionary(d => d.Name, d => new Dictionary<string, long> { ["size"] = d.Size }));
    }

    [RpcMethod("restore_vm_volume_init")]
    private async Task<object?> RestoreVmVolumeInit(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var path = await restores.ExportAsync(store, VmVolume(args), args.String("device"), context.Peer.Pid, context.Logger, context.CancellationToken).ConfigureAwait(false);
        return new Dictionary<string, string> { ["qemu-img-path"] = path };
    }

    [RpcMethod("restore_vm_volume_cleanup")]
    private async Task<object?> RestoreVmVolumeCleanup(RpcArgs args, CallContext context)
    {
        await restores.StopAsync(Open(args), VmVolume(args), VmBackup.CheckDeviceName(args.String("device"))).ConfigureAwait(false);
        return null;
    }

    [RpcMethod("restore_vm_cleanup")]
    private async Task<object?> RestoreVmCleanup(RpcArgs args, CallContext context)
    {
        await restores.EndAsync(Open(args).Root, VmVolume(args)).ConfigureAwait(false);
        return null;
    }

    private static VolumeName VmVolume(RpcArgs args)
    {
        var volume = args.Volume();
        return volume.Type == GuestType.Qemu ? volume : throw DirBackupException.InvalidParams($"'{volume}' is a container backup, not a VM backup");
    }
    /// <summary>
    /// tar: the archive itself, a regular file whose name ends in .tar, which pve-container checks and extracts;
    /// directory: the squashfs image mounted read-only.
    /// </summary>
    [RpcMethod("restore_container_init")]
    private async Task<object?> RestoreContainerInit(RpcArgs args, CallContext context)
    {
        var store = Open(args);
        var volume = args.Volume();
        if (volume.Type != GuestType.Lxc)
        {
            throw DirBackupException.InvalidParams($"'{volume}' is a VM backup, not a container backup");
        }
        var manifest = store.ReadManifest(volume);
        if (manifest.Archive is not (ContainerBackup.ArchiveFile or ContainerBackup.SquashfsFile))
        {
            throw DirBackupException.Io($"backup '{volume}' records no container archive");
        }
        var path = Path.Combine(store.BackupDir(volume), manifest.Archive);
        if (Native.Libc.FileType(path) != Native.Libc.S_IFREG)
        {
            throw DirBackupException.Io($"backup '{volume}': '{path}' is missing or not a regular file");
        }
        if (manifest.Archive == ContainerBackup.ArchiveFile)
        {
            restores.Begin(store, volume, context.Peer.Pid);
            return new Dictionary<string, string> { ["tar-path"] = path };
        }
        var directory = await restores.MountContainerAsync(store, volume, path, context.Peer.Pid, context.CancellationToken).ConfigureAwait(false);
        return new Dictionary<string, string> { ["archive-directory"] = directory };
    }

    /// <summary>Ends a restore (idempotent): a directory restore's mount goes, and either kind's backup may be deleted again.</summary>
    [RpcMethod("restore_container_cleanup")]
    private async Task<object?> RestoreContainerCleanup(RpcArgs args, CallContext context)
    {
        await restores.EndContainerAsync(Open(args).Root, args.Volume()).ConfigureAwait(false);
        return null;
    }
}

using DirBackup.Errors;
using DirBackup.Rpc;
using DirBackup.Store;

namespace DirBackup.Api;

/// <summary>
/// The backup-provider methods (PVE-API.md 3.2). Reading what a committed backup holds works now; the
/// backup and restore paths answer, honestly, that this daemon version does not have them yet.
/// </summary>
public sealed class ProviderApi(StoreSettings settings, string daemonVersion)
{
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

    [RpcMethod("job_init")] private Task<object?> JobInit(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("job_cleanup")] private Task<object?> JobCleanup(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("backup_init")] private Task<object?> BackupInit(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("backup_cleanup")] private Task<object?> BackupCleanup(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("backup_get_mechanism")] private Task<object?> BackupGetMechanism(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("backup_handle_log_file")] private Task<object?> BackupHandleLogFile(RpcArgs args, CallContext context) => NotYet(args, "backups");
    [RpcMethod("backup_vm_query_incremental")] private Task<object?> BackupVmQueryIncremental(RpcArgs args, CallContext context) => NotYet(args, "VM backups");
    [RpcMethod("backup_vm")] private Task<object?> BackupVm(RpcArgs args, CallContext context) => NotYet(args, "VM backups");
    [RpcMethod("backup_container_prepare")] private Task<object?> BackupContainerPrepare(RpcArgs args, CallContext context) => NotYet(args, "container backups");
    [RpcMethod("backup_container")] private Task<object?> BackupContainer(RpcArgs args, CallContext context) => NotYet(args, "container backups");
    [RpcMethod("restore_vm_init")] private Task<object?> RestoreVmInit(RpcArgs args, CallContext context) => NotYet(args, "VM restores");
    [RpcMethod("restore_vm_cleanup")] private Task<object?> RestoreVmCleanup(RpcArgs args, CallContext context) => NotYet(args, "VM restores");
    [RpcMethod("restore_vm_volume_init")] private Task<object?> RestoreVmVolumeInit(RpcArgs args, CallContext context) => NotYet(args, "VM restores");
    [RpcMethod("restore_vm_volume_cleanup")] private Task<object?> RestoreVmVolumeCleanup(RpcArgs args, CallContext context) => NotYet(args, "VM restores");
    [RpcMethod("restore_container_init")] private Task<object?> RestoreContainerInit(RpcArgs args, CallContext context) => NotYet(args, "container restores");
    [RpcMethod("restore_container_cleanup")] private Task<object?> RestoreContainerCleanup(RpcArgs args, CallContext context) => NotYet(args, "container restores");

    private Task<object?> NotYet(RpcArgs args, string feature)
    {
        Open(args);
        throw new DirBackupException(ErrorCode.NotImplementedYet,
            $"{args.Method}: {feature} are not implemented yet in dirbackupd {daemonVersion}; this version lists, annotates and deletes backups only");
    }
}

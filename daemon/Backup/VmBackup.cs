using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using DirBackup.Errors;
using DirBackup.Native;
using DirBackup.Qemu;
using DirBackup.Rpc;
using DirBackup.Store;

namespace DirBackup.Backup;

/// <summary>One device of backup_vm's <c>$volumes</c>, checked.</summary>
public sealed record VmDevice(string Name, long Size, string NbdPath, string BitmapMode, string? BitmapName)
{
    public string ImageFile => ImageFileOf(Name);

    public static string ImageFileOf(string device) => device + ".qcow2";

    /// <summary>How an image names its parent's image of the same device: relative, so a storage can move.</summary>
    public static string? BackingFileOf(string? parentDir, string imageFile) => parentDir is null ? null : $"../{parentDir}/{imageFile}";
    public string DigestFile => Name + ".digests";
}

/// <summary>
/// backup_vm: every device copied into a qcow2 image (backed by the same device of the parent backup for an
/// incremental), then the backup committed by one rename after data, manifest and directories are synced;
/// only then the incremental record moves on. A failure before the rename leaves nothing behind.
/// </summary>
public sealed partial class VmBackup(BackupSettings settings)
{
    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}\z")]
    private static partial Regex DeviceNamePattern();

    public static string CheckDeviceName(string name) =>
        DeviceNamePattern().IsMatch(name) && !name.Contains("..", StringComparison.Ordinal)
            ? name
            : throw DirBackupException.InvalidParams($"device name '{Printable(name)}' is not a QEMU drive id");

    private static string Printable(string s) => new(s.Select(c => char.IsControl(c) ? '?' : c).Take(80).ToArray());

    public static List<VmDevice> ParseVolumes(JsonElement volumes)
    {
        var devices = new List<VmDevice>();
        foreach (var property in volumes.EnumerateObject())
        {
            var name = CheckDeviceName(property.Name);
            var v = property.Value;
            if (v.ValueKind != JsonValueKind.Object)
            {
                throw DirBackupException.InvalidParams($"device '{name}': expected an object with size, nbd-path and bitmap-mode");
            }
            long size = v.TryGetProperty("size", out var s) && PositiveInteger(s) is long n
                ? n : throw DirBackupException.InvalidParams($"device '{name}': size must be a positive integer");
            var nbdPath = v.TryGetProperty("nbd-path", out var p) && p.ValueKind == JsonValueKind.String
                ? p.GetString()! : throw DirBackupException.InvalidParams($"device '{name}': nbd-path is missing (only the nbd mechanism is supported)");
            var mode = v.TryGetProperty("bitmap-mode", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()! : "none";
            if (mode is not ("none" or "new" or "reuse"))
            {
                throw DirBackupException.InvalidParams($"device '{name}': unknown bitmap-mode '{Printable(mode)}'");
            }
            string? bitmap = v.TryGetProperty("bitmap-name", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString() : null;
            if (mode == "reuse" && string.IsNullOrEmpty(bitmap))
            {
                throw DirBackupException.InvalidParams($"device '{name}': bitmap-mode reuse without a bitmap-name");
            }
            CheckSocket(name, nbdPath);
            devices.Add(new VmDevice(name, size, nbdPath, mode, bitmap));
        }
        if (devices.Count == 0)
        {
            throw DirBackupException.InvalidParams("backup_vm: no devices to back up");
        }
        return devices.OrderBy(d => d.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>Perl sends numbers as strings as often as not.</summary>
    public static long? PositiveInteger(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Number when value.TryGetInt64(out long n) && n > 0 => n,
        JsonValueKind.String when long.TryParse(value.GetString(), NumberStyles.None, CultureInfo.InvariantCulture, out long n) && n > 0 => n,
        _ => null,
    };

    private static void CheckSocket(string device, string path)
    {
        if (path.Length == 0 || path[0] != '/' || path.Any(char.IsControl))
        {
            throw DirBackupException.InvalidParams($"device '{device}': nbd-path '{Printable(path)}' is not an absolute path");
        }
        int type = Libc.FileType(path);
        if (type == -1)
        {
            throw DirBackupException.InvalidParams($"device '{device}': nbd-path '{path}' does not exist");
        }
        if (type != Libc.S_IFSOCK)
        {
            throw DirBackupException.InvalidParams($"device '{device}': nbd-path '{path}' is not a Unix socket");
        }
    }

    public async Task RunAsync(GuestBackup session, RpcArgs args, CallContext context)
    {
        var cancellationToken = context.CancellationToken;
        var store = session.Store;
        var vmid = session.Volume.VmId;
        var devices = ParseVolumes(args.Element("volumes"));
        var info = args.Element("info");
        var firewall = info.ValueKind == JsonValueKind.Object && info.TryGetProperty("firewall-config", out var fw) && fw.ValueKind == JsonValueKind.String
            ? DecodeBytes(fw.GetString()!, "info.firewall-config") : null;
        long limit = info.ValueKind == JsonValueKind.Object && info.TryGetProperty("bandwidth-limit", out var bw) && PositiveInteger(bw) is long l ? l : 0;
        var limiter = limit > 0 ? new BandwidthLimiter(limit) : null;
        var staging = session.StagingDir;
        try
        {
            var parents = await ClaimParentsAsync(session, devices, cancellationToken).ConfigureAwait(false);
            AtomicFile.WriteNew(Path.Combine(staging, "guest.conf"), args.Bytes("guest-config"));
            if (firewall is not null)
            {
                AtomicFile.WriteNew(Path.Combine(staging, "firewall.conf"), firewall);
            }
            var manifestDevices = new List<ManifestDevice>();
            foreach (var device in devices)
            {
                manifestDevices.Add(await CopyDeviceAsync(session, device, parents[device.Name], limiter, context).ConfigureAwait(false));
            }
            cancellationToken.ThrowIfCancellationRequested();
            var manifest = new Manifest
            {
                VmId = vmid,
                Type = "qemu",
                BackupTime = session.Volume.BackupTime,
                GuestConfig = "guest.conf",
                FirewallConfig = firewall is null ? null : "firewall.conf",
                Devices = manifestDevices,
            };
            session.Commit(manifest);
        }
        catch
        {
            session.RemoveStaging();
            throw;
        }
        try
        {
            await UpdateRecordAsync(session, devices, cancellationToken: CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is DirBackupException or IOException)
        {
            // The backup is complete; a stale record only makes the next backup full (see IncrementalRecord.Choose).
            await context.WarnAsync($"backup '{session.Volume}' is complete, but its incremental record was not updated ({e.Message}); the next backup of this guest will be full").ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Chooses each device's parent and records the choice in a provisional manifest in the staging directory,
    /// under the guest lock: from then on free_image sees this backup as a dependent and leaves its parents alone.
    /// </summary>
    private static async Task<Dictionary<string, string?>> ClaimParentsAsync(GuestBackup session, List<VmDevice> devices, CancellationToken cancellationToken)
    {
        var store = session.Store;
        int vmid = session.Volume.VmId;
        using (await store.LockGuestAsync(vmid, cancellationToken).ConfigureAwait(false))
        {
            var record = IncrementalRecord.Read(store, vmid);
            var parents = devices.ToDictionary(d => d.Name, d => ParentOf(d, record, store, vmid));
            var provisional = new Manifest
            {
                VmId = vmid,
                Type = "qemu",
                BackupTime = session.Volume.BackupTime,
                Devices = devices.Select(d => new ManifestDevice { Name = d.Name, Size = d.Size, File = d.ImageFile, Parent = parents[d.Name] }).ToList(),
            };
            AtomicFile.Write(Path.Combine(session.StagingDir, Manifest.FileName), provisional.ToBytes());
            return parents;
        }
    }

    private static string? ParentOf(VmDevice device, IncrementalRecord record, BackupStore store, int vmid)
    {
        if (device.BitmapMode != "reuse")
        {
            return null;
        }
        var choice = record.Choose(store, vmid, device.Name, device.Size);
        return choice.Parent
            ?? throw DirBackupException.Io($"device '{device.Name}': QEMU's bitmap cannot be used: {choice.WhyFull}; the next backup of this guest will be full");
    }

    private async Task<ManifestDevice> CopyDeviceAsync(GuestBackup session, VmDevice device, string? parent, BandwidthLimiter? limiter, CallContext context)
    {
        var cancellationToken = context.CancellationToken;
        await context.InfoAsync(parent is null
            ? $"{device.Name}: full backup of {Units.Bytes(device.Size)} (bitmap-mode {device.BitmapMode})"
                + (session.WhyFull.TryGetValue(device.Name, out var why) ? ": " + why : "")
            : $"{device.Name}: incremental backup of {Units.Bytes(device.Size)} on top of {parent}").ConfigureAwait(false);
        var dirtyBitmap = parent is null ? null : device.BitmapName;
        long started = Stopwatch.GetTimestamp();
        var backupTarget = session.TakeTarget(device.Name, device.Size, parent)
            ?? BackupTarget.Start(session.StagingDir, device.Name, device.Size, parent, settings.RuntimeDir, aheadLogger: null, cancellationToken);
        // The walk over the source and the target's set-up are independent: overlap them.
        var plan = Task.Run(() => DiskPlan.Walk(device.NbdPath, device.Name, dirtyBitmap, device.Size), cancellationToken);
        StorageDaemon target;
        try
        {
            target = await backupTarget.Served.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            backupTarget.Discard();
            await plan.ContinueWith(p =>
            {
                if (p.IsCompletedSuccessfully)
                {
                    p.Result.Dispose();
                }
            }, TaskScheduler.Default).ConfigureAwait(false);
            throw;
        }

        var waited = Stopwatch.GetElapsedTime(started);
        TimeSpan copied, stopped;
        var stats = new CopyStats();
        await using (target.ConfigureAwait(false))
        {
            using var diskPlan = await plan.ConfigureAwait(false);
            using var digests = DigestFile.Create(Path.Combine(session.StagingDir, device.DigestFile), device.Size);
            using var parentDigests = parent is null ? null
                : DigestFile.OpenParent(Path.Combine(session.Store.GuestDir(session.Volume.VmId), parent, device.DigestFile), device.Size);
            var progress = new ProgressReporter(stats, context.InfoAsync, settings.ProgressInterval);
            await using (progress.ConfigureAwait(false))
            {
                progress.Start();
                await DiskCopier.CopyAsync(diskPlan, new DiskCopyRequest
                {
                    SourceSocket = device.NbdPath,
                    SourceExport = device.Name,
                    Size = device.Size,
                    TargetSocket = target.SocketPath,
                    TargetExport = StorageDaemon.ExportName,
                    HasBacking = parent is not null,
                    Digests = digests,
                    ParentDigests = parentDigests,
                    Limiter = limiter,
                    Workers = settings.CopyWorkers,
                }, stats, message => _ = context.WarnAsync(message), cancellationToken).ConfigureAwait(false);
                copied = Stopwatch.GetElapsedTime(started);
                await context.InfoAsync(progress.Line()).ConfigureAwait(false);
                await target.StopAsync().ConfigureAwait(false);
                stopped = Stopwatch.GetElapsedTime(started);
                await LogSummaryAsync(context, device, stats, progress.Elapsed).ConfigureAwait(false);
            }
        }
        Libc.FsyncFile(backupTarget.Image); // the image's only sync: the target leaves it to us
        var synced = Stopwatch.GetElapsedTime(started);
        BackupLog.DevicePhases(context.Logger, device.Name, backupTarget.CreateTime.TotalMilliseconds, backupTarget.ServeTime.TotalMilliseconds,
            waited.TotalMilliseconds, (copied - waited).TotalMilliseconds, (stopped - copied).TotalMilliseconds, (synced - stopped).TotalMilliseconds);
        return new ManifestDevice
        {
            Name = device.Name,
            Size = device.Size,
            File = device.ImageFile,
            Parent = parent,
            Extra = new Dictionary<string, JsonElement>
            {
                ["digests"] = JsonSerializer.SerializeToElement(device.DigestFile),
                ["digest-algorithm"] = JsonSerializer.SerializeToElement("xxh128"),
                ["digest-block"] = JsonSerializer.SerializeToElement(DiskCopier.DigestBlock),
                ["bytes-read"] = JsonSerializer.SerializeToElement(stats.Read),
            },
        };
    }

    private static async Task LogSummaryAsync(CallContext context, VmDevice device, CopyStats stats, TimeSpan elapsed)
    {
        await context.InfoAsync($"backup is sparse: {Units.Bytes(stats.ZeroBytes)} ({Units.Percent(stats.ZeroBytes, device.Size)}%) total zero data").ConfigureAwait(false);
        if (stats.Kept > 0)
        {
            await context.InfoAsync($"backup was done incrementally, reused {Units.Bytes(stats.Kept)} ({Units.Percent(stats.Kept, device.Size)}%)").ConfigureAwait(false);
        }
        double seconds = Math.Max(elapsed.TotalSeconds, 0.001);
        await context.InfoAsync($"transferred {Units.Bytes(stats.ToTransfer)} in {(int)Math.Round(seconds)} seconds ({Units.Bytes(stats.ToTransfer / seconds)}/s)").ConfigureAwait(false);
    }

    /// <summary>QEMU's bitmap for each device is now relative to this backup; a device without a bitmap has no base any more.</summary>
    private static async Task UpdateRecordAsync(GuestBackup session, List<VmDevice> devices, CancellationToken cancellationToken)
    {
        var store = session.Store;
        int vmid = session.Volume.VmId;
        using (await store.LockGuestAsync(vmid, cancellationToken).ConfigureAwait(false))
        {
            var record = IncrementalRecord.Read(store, vmid);
            foreach (var device in devices)
            {
                if (device.BitmapMode == "none")
                {
                    record.Devices.Remove(device.Name);
                }
                else
                {
                    record.Devices[device.Name] = new IncrementalDevice { Backup = session.Volume.BackupDirName, Size = device.Size };
                }
            }
            record.Write(store, vmid);
        }
    }

    private static byte[] DecodeBytes(string base64, string what)
    {
        try
        {
            return Convert.FromBase64String(base64);
        }
        catch (FormatException)
        {
            throw DirBackupException.InvalidParams($"{what} is not base64");
        }
    }
}

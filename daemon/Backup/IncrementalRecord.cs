using System.Text.Json;
using System.Text.Json.Serialization;
using DirBackup.Errors;
using DirBackup.Restore;
using DirBackup.Store;

namespace DirBackup.Backup;

/// <summary>
/// <c>&lt;path&gt;/&lt;vmid&gt;/incremental.json</c>: per device, which committed backup QEMU's dirty bitmap
/// (<c>snapshot-access:&lt;storeid&gt;</c>) is relative to, and the device size it had. Written only after a
/// backup is committed: from then on QEMU has moved its bitmap on (PVE-API.md 4.2.6).
/// </summary>
public sealed class IncrementalRecord
{
    public const string FileName = "incremental.json";

    /// <summary>
    /// The most backups one chain holds. The target's QEMU opens the chain below a new image by the backing names in
    /// the headers, each relative to the image above it, and the path it builds grows by "../qemu-&lt;epoch&gt;/" per
    /// layer: past a little over 200 layers it exceeds PATH_MAX and every later incremental of the guest would fail.
    /// 128 leaves room for a storage path of 1,500 characters, and bounds what a restore reads through.
    /// </summary>
    public const int MaxChainLength = 128;

    [JsonPropertyName("devices")] public Dictionary<string, IncrementalDevice> Devices { get; set; } = new(StringComparer.Ordinal);

    public static string PathFor(BackupStore store, int vmid) => Path.Combine(store.GuestDir(vmid), FileName);

    public static IncrementalRecord Read(BackupStore store, int vmid)
    {
        try
        {
            return JsonSerializer.Deserialize<IncrementalRecord>(File.ReadAllBytes(PathFor(store, vmid))) ?? new IncrementalRecord();
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return new IncrementalRecord();
        }
        catch (JsonException)
        {
            // A damaged record only costs a full backup: answer "new" for every device.
            return new IncrementalRecord();
        }
    }

    public void Write(BackupStore store, int vmid) =>
        AtomicFile.Write(PathFor(store, vmid), JsonSerializer.SerializeToUtf8Bytes(this, new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>
    /// The parent a device's bitmap is relative to, if it still exists with the same size; otherwise why there is none,
    /// and the next backup of that device must be full (the reason goes into the full backup's task log).
    /// </summary>
    public ParentChoice Choose(BackupStore store, int vmid, string device, long size)
    {
        if (!Devices.TryGetValue(device, out var entry))
        {
            return ParentChoice.Full("no earlier backup of this disk on this storage");
        }
        if (entry.Size != size)
        {
            return ParentChoice.Full($"the disk was resized since {entry.Backup} ({Units.Bytes(entry.Size)} then, {Units.Bytes(size)} now)");
        }
        if (VolumeName.FromDirectory(vmid, entry.Backup) is not VolumeName parent)
        {
            return ParentChoice.Full($"the record of incremental backups ({FileName}) is damaged");
        }
        try
        {
            var manifest = store.ReadManifest(parent);
            if (!manifest.Devices.Any(d => d.Name == device && d.Size == size))
            {
                return ParentChoice.Full($"{entry.Backup}, which QEMU's bitmap is relative to, has no such disk");
            }
        }
        catch (DirBackupException)
        {
            return ParentChoice.Full($"{entry.Backup}, which QEMU's bitmap is relative to, is gone");
        }
        // QEMU's bitmap is relative to the newest committed backup of the device. A newer one than the record
        // names means the record missed its update (it is written just after the commit): only a full backup is safe.
        bool newerExists = store.ListBackups(vmid).Any(b => b.Volume.BackupTime > parent.BackupTime && b.Manifest.Devices.Any(d => d.Name == device));
        if (newerExists)
        {
            return ParentChoice.Full($"a backup newer than {entry.Backup}, which QEMU's bitmap is relative to, exists (the clock was set back, or a backup's record was lost)");
        }
        // The new image rests on the whole chain below the parent: one that is damaged (a layer gone, a header that is
        // not the catalog's) would fail this backup and every later one, where a full backup starts afresh.
        List<ChainLayer> chain;
        try
        {
            chain = ChainBuilder.Build(store, parent, device);
        }
        catch (DirBackupException e)
        {
            return ParentChoice.Full($"the chain below {entry.Backup} cannot carry another backup: {e.Message}");
        }
        return chain.Count >= MaxChainLength
            ? ParentChoice.Full($"{entry.Backup} ends a chain of {chain.Count} backups, and a chain holds at most {MaxChainLength}; this full backup starts a new one")
            : new ParentChoice(entry.Backup, null);
    }
}

/// <summary>A device's parent for an incremental backup, or why its backup must be full.</summary>
public readonly record struct ParentChoice(string? Parent, string? WhyFull)
{
    public static ParentChoice Full(string why) => new(null, why);
}

public sealed class IncrementalDevice
{
    [JsonPropertyName("backup")] public string Backup { get; set; } = "";
    [JsonPropertyName("size")] public long Size { get; set; }
}

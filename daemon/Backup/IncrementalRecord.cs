using System.Text.Json;
using System.Text.Json.Serialization;
using DirBackup.Errors;
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
    /// The parent a device's bitmap is relative to, if it still exists with the same size; otherwise null, and
    /// the next backup of that device must be full.
    /// </summary>
    public string? UsableParent(BackupStore store, int vmid, string device, long size)
    {
        if (!Devices.TryGetValue(device, out var entry) || entry.Size != size)
        {
            return null;
        }
        var volume = VolumeName.FromDirectory(vmid, entry.Backup);
        if (volume is not VolumeName parent)
        {
            return null;
        }
        try
        {
            var manifest = store.ReadManifest(parent);
            if (!manifest.Devices.Any(d => d.Name == device && d.Size == size))
            {
                return null;
            }
        }
        catch (DirBackupException)
        {
            return null;
        }
        // QEMU's bitmap is relative to the newest committed backup of the device. A newer one than the record
        // names means the record missed its update (it is written just after the commit): only a full backup is safe.
        bool newerExists = store.ListBackups(vmid).Any(b => b.Volume.BackupTime > parent.BackupTime && b.Manifest.Devices.Any(d => d.Name == device));
        return newerExists ? null : entry.Backup;
    }
}

public sealed class IncrementalDevice
{
    [JsonPropertyName("backup")] public string Backup { get; set; } = "";
    [JsonPropertyName("size")] public long Size { get; set; }
}

using System.Text;
using System.Text.Json.Nodes;
using DirBackup.Store;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// Prepares a storage directory holding committed backups, written with the daemon's own manifest type, so the
/// tests of listing, attributes and deletion run before the backup paths exist.
/// </summary>
public sealed class StorageBuilder
{
    public StorageBuilder(string root, string storeId = "test")
    {
        Root = root;
        StoreId = storeId;
        Directory.CreateDirectory(root);
    }

    public string Root { get; }
    public string StoreId { get; }
    public List<PreparedBackup> Backups { get; } = [];

    public JsonObject Scfg => new() { ["type"] = "dirbackup", ["path"] = Root, ["content"] = new JsonObject { ["backup"] = 1 } };

    public PreparedBackup AddVm(int vmid, long time, string? parent = null, string? notes = null, bool isProtected = false, int diskBytes = 4096, long deviceSize = 4L << 30)
    {
        var volume = new VolumeName(vmid, GuestType.Qemu, time);
        var dir = Path.Combine(Root, vmid.ToString(System.Globalization.CultureInfo.InvariantCulture), volume.BackupDirName);
        Directory.CreateDirectory(dir);
        var config = Encoding.UTF8.GetBytes($"# vm {vmid}\nmemory: 2048\nscsi0: local:{vmid}/disk.qcow2,size=4G\n#qmdump#map:scsi0:drive-scsi0:local:qcow2:\n");
        config = [.. config, 0xC3, 0xA9, 0x00, 0xFF, (byte)'\n'];
        File.WriteAllBytes(Path.Combine(dir, "guest.conf"), config);
        File.WriteAllBytes(Path.Combine(dir, "drive-scsi0.qcow2"), new byte[diskBytes]);
        var manifest = new Manifest
        {
            VmId = vmid,
            Type = "qemu",
            BackupTime = time,
            Size = config.Length + diskBytes,
            Notes = notes,
            Protected = isProtected,
            GuestConfig = "guest.conf",
            Devices = [new ManifestDevice { Name = "drive-scsi0", Size = deviceSize, File = "drive-scsi0.qcow2", Parent = parent is null ? null : $"qemu-{parent}" }],
        };
        File.WriteAllBytes(Path.Combine(dir, Manifest.FileName), manifest.ToBytes());
        var prepared = new PreparedBackup(volume, dir, manifest, config);
        Backups.Add(prepared);
        return prepared;
    }

    /// <summary>
    /// A VM backup whose disk is a real 4 GiB qcow2 image, for tests that export or merge it: empty, or backed by
    /// the parent's image as a backup writes it, then changed by the given qemu-io commands ("write -P 1 0 1M").
    /// </summary>
    public Task<PreparedBackup> AddVmWithImageAsync(int vmid, long time, string? parent = null, params string[] writes) =>
        AddVmWithImageAsync(vmid, time, parent, 4L << 30, [], writes);

    /// <summary>The same with a disk of <paramref name="size"/> bytes, created with qemu-img's <paramref name="createOptions"/> ("-o", ...).</summary>
    public async Task<PreparedBackup> AddVmWithImageAsync(int vmid, long time, string? parent, long size, string[] createOptions, params string[] writes)
    {
        var backup = AddVm(vmid, time, parent, deviceSize: size);
        var image = Path.Combine(backup.Directory, "drive-scsi0.qcow2");
        File.Delete(image);
        var create = new List<string> { "create", "-q", "-f", "qcow2" };
        create.AddRange(createOptions);
        if (parent is not null)
        {
            create.AddRange(["-u", "-b", $"../qemu-{parent}/drive-scsi0.qcow2", "-F", "qcow2"]);
        }
        create.AddRange([image, size.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        await SourceDisk.Run("qemu-img", [.. create]);
        if (writes.Length > 0)
        {
            await SourceDisk.Run("qemu-io", [.. writes.SelectMany(w => new[] { "-c", w }), "-f", "qcow2", image]);
        }
        return backup;
    }

    public PreparedBackup AddContainer(int vmid, long time, string archive = "archive.tar")
    {
        var volume = new VolumeName(vmid, GuestType.Lxc, time);
        var dir = Path.Combine(Root, vmid.ToString(System.Globalization.CultureInfo.InvariantCulture), volume.BackupDirName);
        Directory.CreateDirectory(dir);
        var config = Encoding.UTF8.GetBytes($"arch: amd64\nhostname: ct{vmid}\nunprivileged: 1\n");
        var firewall = Encoding.UTF8.GetBytes("[OPTIONS]\nenable: 1\n");
        File.WriteAllBytes(Path.Combine(dir, "guest.conf"), config);
        File.WriteAllBytes(Path.Combine(dir, "firewall.conf"), firewall);
        File.WriteAllBytes(Path.Combine(dir, archive), new byte[10240]);
        var manifest = new Manifest
        {
            VmId = vmid,
            Type = "lxc",
            BackupTime = time,
            Size = config.Length + firewall.Length + 10240,
            Archive = archive,
            GuestConfig = "guest.conf",
            FirewallConfig = "firewall.conf",
        };
        File.WriteAllBytes(Path.Combine(dir, Manifest.FileName), manifest.ToBytes());
        var prepared = new PreparedBackup(volume, dir, manifest, config);
        Backups.Add(prepared);
        return prepared;
    }

    /// <summary>Every backup file with its hash, to prove a refused call changed nothing; lock files are not backup state.</summary>
    public string Snapshot() => string.Join("\n", Directory.EnumerateFileSystemEntries(Root, "*", SearchOption.AllDirectories)
        .Where(p => Path.GetFileName(p) is not (".lock" or DirBackup.Store.InUse.FileName))
        .Order(StringComparer.Ordinal)
        .Select(p => File.Exists(p) ? $"{p} {Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(p)))}" : p));

    /// <summary>What the Perl end-to-end test reads to know which backups it should find (DIRBACKUP_E2E).</summary>
    public JsonObject Describe()
    {
        var backups = new JsonArray();
        foreach (var b in Backups)
        {
            var parent = b.Manifest.Parents.FirstOrDefault();
            backups.Add(new JsonObject
            {
                ["volname"] = b.Volume.ToString(),
                ["vmid"] = b.Volume.VmId,
                ["subtype"] = b.Volume.Type.Name(),
                ["ctime"] = b.Volume.BackupTime,
                ["size"] = b.Manifest.Size,
                ["notes"] = b.Manifest.Notes,
                ["protected"] = b.Manifest.Protected,
                ["parent"] = parent is null ? null : $"backup/{b.Volume.VmId}/{parent}",
                ["guest-config-base64"] = Convert.ToBase64String(b.GuestConfig),
            });
        }
        return new JsonObject { ["storeid"] = StoreId, ["scfg"] = Scfg, ["backups"] = backups };
    }
}

public sealed record PreparedBackup(VolumeName Volume, string Directory, Manifest Manifest, byte[] GuestConfig)
{
    public string VolName => Volume.ToString();
}

using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Native;
using DirBackup.Qemu;
using DirBackup.Store;

namespace DirBackup.Restore;

/// <summary>
/// A device's image chain, built from the catalog (manifests), never from image headers, and checked layer by
/// layer: a regular file where the manifest says, qcow2, no external data file, the recorded size, and a header
/// whose backing file is exactly the parent the manifest names (anything else is a tampered image).
/// </summary>
public static class ChainBuilder
{
    public static List<ChainLayer> Build(BackupStore store, VolumeName volume, string device)
    {
        VmBackup.CheckDeviceName(device);
        var layers = new List<ChainLayer>();
        var current = volume;
        var seen = new HashSet<VolumeName>();
        VolumeName? merging = null;
        while (true)
        {
            if (!seen.Add(current))
            {
                throw DirBackupException.Io($"backup '{volume}': the chain of '{device}' loops at '{current}'");
            }
            var manifest = store.ReadManifest(current, evenIfMerging: current != volume);
            if (manifest.Merging)
            {
                merging ??= current;
            }
            var entry = manifest.Devices.FirstOrDefault(d => d.Name == device)
                ?? throw (current == volume
                    ? DirBackupException.InvalidParams($"backup '{volume}' has no device '{device}' (it has {string.Join(", ", manifest.Devices.Select(d => d.Name))})")
                    : DirBackupException.Io($"backup '{volume}': parent '{current}' lacks device '{device}'"));
            if (entry.File != device + ".qcow2")
            {
                throw DirBackupException.Io($"backup '{current}': manifest names '{entry.File}' for device '{device}'");
            }
            VolumeName? parent = entry.Parent is null ? null
                : VolumeName.FromDirectory(current.VmId, entry.Parent) ?? throw DirBackupException.Io($"backup '{current}': parent '{entry.Parent}' is not a backup name");
            var path = Path.Combine(store.BackupDir(current), entry.File);
            var expectedBacking = VmDevice.BackingFileOf(parent?.BackupDirName, entry.File);
            layers.Add(new ChainLayer(path, current.ToString(), entry.Size, expectedBacking));
            if (parent is not VolumeName next)
            {
                break;
            }
            current = next;
        }
        layers.Reverse();
        try
        {
            foreach (var layer in layers)
            {
                CheckLayer(layer);
            }
        }
        catch (DirBackupException e) when (e.Code == ErrorCode.IoError && merging is VolumeName cutShort)
        {
            // A merge cut short between moving the merged image and recording it leaves the catalog one step behind.
            throw DirBackupException.Io($"{e.Message} (the chain runs through '{cutShort}', whose deletion was cut short; 'pvesm free {cutShort.VolId(store.Config.StoreId)}' finishes it, then try again)", e);
        }
        return layers;
    }

    private static void CheckLayer(ChainLayer layer)
    {
        int type = Libc.FileType(layer.Path);
        if (type == -1)
        {
            throw DirBackupException.Io($"{layer.Backup}: image '{layer.Path}' is missing");
        }
        if (type != Libc.S_IFREG)
        {
            throw DirBackupException.Io($"{layer.Backup}: image '{layer.Path}' is not a regular file (a link or something else replaced it)");
        }
        Qcow2Info header;
        try
        {
            header = Qcow2Header.Read(layer.Path);
        }
        catch (DirBackupException e)
        {
            throw DirBackupException.Io($"{layer.Backup}: {e.Message}", e);
        }
        if (header.VirtualSize != layer.Size)
        {
            throw DirBackupException.Io($"{layer.Backup}: '{layer.Path}' has {header.VirtualSize} bytes, the manifest records {layer.Size}");
        }
        if (header.HasExternalData)
        {
            throw DirBackupException.Io($"{layer.Backup}: '{layer.Path}' keeps its data in an external file '{header.DataFile ?? "(named by the caller)"}'; refusing it");
        }
        if (header.BackingFile != layer.ExpectedBacking)
        {
            throw DirBackupException.Io($"{layer.Backup}: the header of '{layer.Path}' names backing file '{header.BackingFile ?? "(none)"}' where the catalog says '{layer.ExpectedBacking ?? "(none)"}'; refusing a tampered image");
        }
    }
}

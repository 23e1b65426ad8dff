using System.Globalization;

namespace DirBackup.Qemu;

/// <summary>qemu-img, for creating the backup images: the field's own tool for the qcow2 format.</summary>
public static class QemuImg
{
    public const string Tool = "qemu-img";

    /// <summary>A new qcow2 image; with a parent, its backing file is that image, named relative to the new one's directory.</summary>
    public static Task CreateAsync(string path, long size, string? relativeBacking, CancellationToken cancellationToken)
    {
        var args = new List<string> { "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536" };
        if (relativeBacking is not null)
        {
            args.AddRange(["-b", relativeBacking, "-F", "qcow2"]);
        }
        args.AddRange([path, size.ToString(CultureInfo.InvariantCulture)]);
        return ChildProcess.RunAsync(Tool, args, cancellationToken);
    }
}
